/*
 * dkim.c - DKIM verification (RFC 6376, RFC 8463 ed25519) with libopendkim.
 *
 * One DKIM_LIB for the engine; per message a verify handle fed with the
 * message as received.  Keys are fetched through moat's resolver by a key
 * lookup callback (libopendkim's own resolver is never used), so tests
 * serve their own zones.  Every signature up to DKIM_MAX_SIGS is checked;
 * the results go to msg_ctx->auth.dkim[] (Authentication-Results, DMARC)
 * and to the symbols DKIM_VALID, DKIM_INVALID, DKIM_KEY_TOO_SMALL,
 * DKIM_BODY_LENGTH, DKIM_TEMPFAIL, DKIM_NONE (docs/filter-engine.md).
 * Runs in: pool threads (check); the worker (init/fini).  Input: the
 * message and DNS answers (untrusted).
 */
#include "config.h"
#include "filter.h"
#include "conf.h"
#include "log.h"
#include "resolver.h"
#include "util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <dkim.h>

#define DKIM_MAX_SIGS   AUTH_MAX_DKIM   /* signatures verified per message */

struct dkim_state {
	DKIM_LIB *lib;
	bool    ed25519;                /* the library verifies ed25519-sha256 */
	unsigned min_bits;              /* RSA keys below fail */
	long long budget_ms;            /* time for all key lookups of one message */
	double  sc_valid, sc_invalid, sc_small, sc_blen, sc_tempfail, sc_none;
};

/* per message, reached from the callbacks through the handle's user context */
struct dkim_msg {
	struct dkim_state *st;
	struct resolver *res;
	const char *qid;
	uint64_t t0;
	size_t  nlookups;
	struct {
		const DKIM_SIGINFO *sig;
		enum dns_status status;
	} lk[DKIM_MAX_SIGS];
};

/* libopendkim calls this once the signatures are known: check at most
 * DKIM_MAX_SIGS of them (each costs a DNS query and a public-key operation) */
static DKIM_CBSTAT
dkim_prescreen(DKIM *d, DKIM_SIGINFO **sigs, int nsigs)
{
	(void)d;
	for (int i = DKIM_MAX_SIGS; i < nsigs; i++)
		dkim_sig_ignore(sigs[i]);
	return DKIM_CBSTAT_CONTINUE;
}

/* a DNS label sequence we are willing to look up: letters, digits, - _ . */
static bool
dkim_name_ok(const char *s)
{
	if (*s == '\0' || *s == '.')
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

/* the key record of one signature, through our resolver (BLOCKING) */
static DKIM_CBSTAT
dkim_key_lookup(DKIM *d, DKIM_SIGINFO *sig, u_char *buf, size_t buflen)
{
	struct dkim_msg *m = dkim_get_user_context(d);
	const char *sel = (const char *)dkim_sig_getselector(sig);
	const char *dom = (const char *)dkim_sig_getdomain(sig);
	struct dns_answer a;
	char name[300];
	const char *rec = NULL;
	size_t slot;
	int n;

	if (m == NULL || sel == NULL || dom == NULL || m->nlookups >= DKIM_MAX_SIGS)
		return DKIM_CBSTAT_ERROR;
	slot = m->nlookups++;
	m->lk[slot].sig = sig;
	m->lk[slot].status = DNS_PERMFAIL;
	if (!dkim_name_ok(sel) || !dkim_name_ok(dom))
		return DKIM_CBSTAT_NOTFOUND;
	n = snprintf(name, sizeof(name), "%s._domainkey.%s", sel, dom);
	if (n < 0 || (size_t)n >= sizeof(name) || n > 253)
		return DKIM_CBSTAT_NOTFOUND;
	/* a budget for all lookups of this message: a slow resolver costs one
	 * timeout, not one per signature */
	if ((long long)(now_ms() - m->t0) > m->st->budget_ms) {
		m->lk[slot].status = DNS_TEMPFAIL;
		return DKIM_CBSTAT_NOTFOUND;
	}
	memset(&a, 0, sizeof(a));
	m->lk[slot].status = resolver_query(m->res, name, DNS_T_TXT, &a);
	switch (a.status) {
	case DNS_OK:
		break;
	case DNS_TEMPFAIL:
		log_info("dkim: qid=%s key=%s dns=tempfail why=\"%s\"", m->qid, name, a.why);
		dns_answer_free(&a);
		/* not TRYAGAIN: libopendkim would abandon the whole message;
		 * NOTFOUND lets it go on with the other signatures and
		 * dkim_check() reports this one as temperror from lk[] */
		return DKIM_CBSTAT_NOTFOUND;
	default:
		dns_answer_free(&a);
		return DKIM_CBSTAT_NOTFOUND;
	}
	/* RFC 6376 3.6.2.2: several records give undefined results; take the
	 * first that looks like a DKIM key */
	for (size_t i = 0; i < a.n && rec == NULL; i++) {
		const char *t = a.text[i];
		while (*t == ' ' || *t == '\t')
			t++;
		if (!strncmp(t, "v=DKIM1", 7))
			rec = a.text[i];
	}
	if (rec == NULL)
		rec = a.text[0];
	if (strlen(rec) >= buflen) {
		dns_answer_free(&a);
		return DKIM_CBSTAT_NOTFOUND;
	}
	memcpy(buf, rec, strlen(rec) + 1);
	dns_answer_free(&a);
	return DKIM_CBSTAT_CONTINUE;
}

static int
dkim_filter_init(const struct moat_conf *c, void **state, char **err)
{
	struct dkim_state *st;
	unsigned int minbits = 1, flags;

	*state = NULL;
	if (!c->dkim)
		return 0;
	st = xcalloc(1, sizeof(*st));
	st->lib = dkim_init(NULL, NULL);
	if (st->lib == NULL) {
		free(st);
		*err = xstrdup("libopendkim: dkim_init failed");
		return -1;
	}
	/* key size policy is ours (RSA only: an ed25519 key is 256 bits) */
	(void)dkim_options(st->lib, DKIM_OP_SETOPT, DKIM_OPTS_MINKEYBITS, &minbits, sizeof(minbits));
	/* keep handles of syntactically bad signatures so they are reported */
	flags = DKIM_LIBFLAGS_BADSIGHANDLES;
	(void)dkim_options(st->lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags));
	dkim_set_key_lookup(st->lib, dkim_key_lookup);
	dkim_set_prescreen(st->lib, dkim_prescreen);
	st->ed25519 = dkim_libfeature(st->lib, DKIM_FEATURE_ED25519);
	st->min_bits = (unsigned)c->dkim_min_key_bits;
	st->budget_ms = c->resolver_timeout * 1000 * 2;
	st->sc_valid = filter_score(c, "DKIM_VALID", -0.1);
	st->sc_invalid = filter_score(c, "DKIM_INVALID", 1.0);
	st->sc_small = filter_score(c, "DKIM_KEY_TOO_SMALL", 1.0);
	st->sc_blen = filter_score(c, "DKIM_BODY_LENGTH", 0.5);
	st->sc_tempfail = filter_score(c, "DKIM_TEMPFAIL", 0);
	st->sc_none = filter_score(c, "DKIM_NONE", 0);
	if (!st->ed25519)
		log_warnx("dkim: libopendkim without ed25519: ed25519-sha256 signatures are permerror");
	*state = st;
	return 0;
}

static void
dkim_filter_fini(void *state)
{
	struct dkim_state *st = state;

	if (st == NULL)
		return;
	dkim_close(st->lib);
	free(st);
}

/* the first 8 characters of b= without folding white space (RFC 6008) */
static void
dkim_bprefix(DKIM_SIGINFO *sig, char *out, size_t outsz)
{
	const u_char *b = dkim_sig_gettagvalue(sig, false, (u_char *)"b");
	size_t n = 0;

	out[0] = '\0';
	if (b == NULL)
		return;
	for (; *b && n < 8 && n + 1 < outsz; b++)
		if ((*b >= 'A' && *b <= 'Z') || (*b >= 'a' && *b <= 'z') || (*b >= '0' && *b <= '9') ||
		    *b == '+' || *b == '/' || *b == '=')
			out[n++] = (char)*b;
	out[n] = '\0';
}

/* copy a library string into an A-R field: printable, no quotes or ; */
static void
dkim_copy(char *dst, size_t dstsz, const u_char *src)
{
	size_t n = 0;

	for (; src && *src && n + 1 < dstsz; src++)
		dst[n++] = (*src > 0x20 && *src < 0x7f && *src != '"' && *src != ';' && *src != '(' &&
		    *src != ')' && *src != '\\') ? (char)*src : '?';
	dst[n] = '\0';
}

/* a DKIM-Signature field in the header section (bounded scan) */
static bool
dkim_has_sig_field(const char *msg, size_t len)
{
	size_t i = 0;

	while (i < len) {
		const char *nl = memchr(msg + i, '\n', len - i);
		size_t l = nl ? (size_t)(nl - (msg + i)) : len - i;
		if (l == 0 || (l == 1 && msg[i] == '\r'))
			return false;   /* end of the header section */
		if (ascii_prefix_ci(msg + i, l, "DKIM-Signature:"))
			return true;
		i += l + 1;
	}
	return false;
}

enum dkim_kind { K_VALID, K_INVALID, K_SMALL, K_BLEN, K_TEMPFAIL, K_NKINDS };

static void
dkim_check(void *state, struct msg_ctx *x, struct verdict *v)
{
	struct dkim_state *st = state;
	static const char *const symname[K_NKINDS] = { "DKIM_VALID", "DKIM_INVALID",
	    "DKIM_KEY_TOO_SMALL", "DKIM_BODY_LENGTH", "DKIM_TEMPFAIL" };
	const double score[K_NKINDS] = { st->sc_valid, st->sc_invalid, st->sc_small, st->sc_blen,
	    st->sc_tempfail };
	char why[K_NKINDS][200];
	unsigned count[K_NKINDS] = { 0 };
	struct dkim_msg m;
	DKIM_SIGINFO **sigs = NULL;
	DKIM_STAT s;
	DKIM *d;
	int nsigs = 0;
	char logbuf[1024];
	size_t ll = 0;

	if (x->trusted || x->msg == NULL)
		return;
	memset(&m, 0, sizeof(m));
	m.st = st;
	m.res = x->res;
	m.qid = x->qid;
	m.t0 = now_ms();
	d = dkim_verify(st->lib, (const u_char *)x->qid, NULL, &s);
	if (d == NULL) {
		verdict_add(v, "DKIM_TEMPFAIL", st->sc_tempfail, "verifier unavailable");
		return;
	}
	dkim_set_user_context(d, &m);
	s = dkim_chunk(d, (u_char *)(uintptr_t)x->msg, x->len);
	if (s == DKIM_STAT_OK)
		s = dkim_chunk(d, NULL, 0);
	if (s == DKIM_STAT_OK)
		s = dkim_eom(d, NULL);
	if (dkim_getsiglist(d, &sigs, &nsigs) != DKIM_STAT_OK)
		nsigs = 0;
	if ((nsigs <= 0 || sigs == NULL) && s != DKIM_STAT_OK && s != DKIM_STAT_NOSIG &&
	    dkim_has_sig_field(x->msg, x->len)) {
		/* the library gave up before it had signatures (header syntax,
		 * resources) */
		const char *e = dkim_geterror(d);
		char r[160];
		snprintf(r, sizeof(r), "message not verifiable: %s", e ? e : "error");
		verdict_add(v, "DKIM_INVALID", st->sc_invalid, r);
		memset(&x->auth.dkim[0], 0, sizeof(x->auth.dkim[0]));
		x->auth.dkim[0].res = AR_PERMERROR;
		moat_strlcpy(x->auth.dkim[0].reason, "message not verifiable", sizeof(x->auth.dkim[0].reason));
		x->auth.ndkim = 1;
		log_info("dkim: qid=%s status=%d error=\"%s\"", x->qid, (int)s, e ? e : "-");
		dkim_free(d);
		return;
	}
	if (nsigs <= 0 || sigs == NULL) {
		x->auth.dkim_none = true;
		verdict_add(v, "DKIM_NONE", st->sc_none, "no signature");
		log_info("dkim: qid=%s sigs=0", x->qid);
		dkim_free(d);
		return;
	}
	for (int i = 0; i < nsigs && x->auth.ndkim < AUTH_MAX_DKIM; i++) {
		DKIM_SIGINFO *sig = sigs[i];
		struct auth_dkim *r = &x->auth.dkim[x->auth.ndkim];
		unsigned flags = dkim_sig_getflags(sig);
		int err = dkim_sig_geterror(sig), bh = dkim_sig_getbh(sig);
		dkim_alg_t alg = DKIM_SIGN_UNKNOWN;
		unsigned int bits = 0;
		enum dns_status dns = DNS_OK;
		enum dkim_kind kind;
		const u_char *a;

		if (flags & DKIM_SIGFLAG_IGNORE)
			continue;
		x->auth.ndkim++;
		memset(r, 0, sizeof(*r));
		dkim_copy(r->domain, sizeof(r->domain), dkim_sig_getdomain(sig));
		dkim_copy(r->selector, sizeof(r->selector), dkim_sig_getselector(sig));
		a = dkim_sig_gettagvalue(sig, false, (u_char *)"a");
		dkim_copy(r->algo, sizeof(r->algo), a);
		dkim_bprefix(sig, r->b, sizeof(r->b));
		(void)dkim_sig_getsignalg(sig, &alg);
		for (size_t k = 0; k < m.nlookups; k++)
			if (m.lk[k].sig == sig)
				dns = m.lk[k].status;

		if (dns == DNS_TEMPFAIL || err == DKIM_SIGERROR_KEYFAIL) {
			r->res = AR_TEMPERROR;
			moat_strlcpy(r->reason, "key lookup failed", sizeof(r->reason));
			kind = K_TEMPFAIL;
		} else if ((flags & DKIM_SIGFLAG_PASSED) && bh == DKIM_SIGBH_MATCH) {
			ssize_t msglen = -1, canonlen = -1, signlen = -1;
			(void)dkim_sig_getkeysize(sig, &bits);
			(void)dkim_sig_getcanonlen(d, sig, &msglen, &canonlen, &signlen);
			if ((alg == DKIM_SIGN_RSASHA1 || alg == DKIM_SIGN_RSASHA256) && bits < st->min_bits) {
				r->res = AR_FAIL;
				snprintf(r->reason, sizeof(r->reason), "key too small: %u bits", bits);
				kind = K_SMALL;
			} else {
				r->res = AR_PASS;
				kind = K_VALID;
				if (signlen >= 0 && msglen >= 0 && signlen < msglen) {
					/* l= covers less than the body: still a valid
					 * signature, but the rest is unsigned */
					snprintf(r->reason, sizeof(r->reason),
					    "l= covers %zd of %zd body bytes", signlen, msglen);
					count[K_BLEN]++;
					if (count[K_BLEN] == 1)
						snprintf(why[K_BLEN], sizeof(why[K_BLEN]), "d=%s s=%s %s",
						    r->domain, r->selector, r->reason);
				}
			}
		} else if (bh == DKIM_SIGBH_MISMATCH) {
			r->res = AR_FAIL;
			moat_strlcpy(r->reason, "body hash mismatch", sizeof(r->reason));
			kind = K_INVALID;
		} else if (err == DKIM_SIGERROR_BADSIG) {
			r->res = AR_FAIL;
			moat_strlcpy(r->reason, "signature verification failed", sizeof(r->reason));
			kind = K_INVALID;
		} else if (err == DKIM_SIGERROR_KEYTOOSMALL) {
			r->res = AR_FAIL;
			moat_strlcpy(r->reason, "key too small", sizeof(r->reason));
			kind = K_SMALL;
		} else {
			const char *es = err == DKIM_SIGERROR_NOKEY ? "no key" :
			    err == DKIM_SIGERROR_OK ? "not verified" : dkim_sig_geterrorstr(err);
			r->res = AR_PERMERROR;
			dkim_copy(r->reason, sizeof(r->reason), (const u_char *)(es ? es : "error"));
			for (char *p = r->reason; *p; p++)
				if (*p == '?')
					*p = ' ';
			kind = K_INVALID;
		}
		if (count[kind]++ == 0)
			snprintf(why[kind], sizeof(why[kind]), "d=%s s=%s a=%s%s%s", r->domain, r->selector,
			    r->algo, r->reason[0] ? ": " : "", r->reason);
		if (ll < sizeof(logbuf))
			ll += (size_t)snprintf(logbuf + ll, sizeof(logbuf) - ll, "%s%s:%s/%s/%s%s%s%s",
			    ll ? "," : "", auth_res_name(r->res), r->domain, r->selector, r->algo,
			    r->reason[0] ? "(" : "", r->reason, r->reason[0] ? ")" : "");
	}
	/* one symbol of each kind, however many signatures gave it: eight
	 * valid signatures of a throw-away domain are worth no more than one */
	for (int k = 0; k < K_NKINDS; k++)
		if (count[k]) {
			if (count[k] > 1) {
				char more[32];
				snprintf(more, sizeof(more), " (+%u more)", count[k] - 1);
				moat_strlcat(why[k], more, sizeof(why[k]));
			}
			verdict_add(v, symname[k], score[k], why[k]);
		}
	log_info("dkim: qid=%s sigs=%d checked=%zu results=%s", x->qid, nsigs, x->auth.ndkim,
	    ll ? logbuf : "-");
	dkim_free(d);
}

const struct filter filter_dkim = { "dkim", FLT_DATA, dkim_filter_init, dkim_check,
    dkim_filter_fini };
