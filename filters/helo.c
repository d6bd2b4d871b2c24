/*
 * helo.c - HELO syntax and forward-confirmed reverse DNS (FCrDNS) symbols.
 *
 * Runs in: a pool thread at end of DATA (check() BLOCKS on DNS: one PTR
 * lookup, then one batch of at most HELO_RDNS_MAX_NAMES forward lookups,
 * both rounds together bounded by one resolver-timeout).  Input: the HELO argument
 * (untrusted, checked as bytes) and the PTR names (untrusted).
 *
 * Symbols (default scores, small as in rspamd's hfilter and SpamAssassin;
 * `score SYMBOL N` overrides):
 *   HELO_NONE 1.0         no HELO/EHLO argument
 *   HELO_BARE_IP 1.5      an address without brackets ("192.0.2.1")
 *   HELO_BAD_LITERAL 1.0  "[...]" that is not an address literal
 *   HELO_BAD_SYNTAX 1.0   not a host name (characters, empty labels)
 *   HELO_NOT_FQDN 1.0     a host name without a dot
 *   HELO_LOCALHOST 2.0    "localhost[.*]" from a client that is not loopback
 *   RDNS_NONE 1.0         the client IP has no PTR
 *   RDNS_MISMATCH 0.5     no PTR name resolves back to the client IP
 *   RDNS_TEMPFAIL 0       the lookups failed (mail flows)
 * A verified name goes to msg_ctx->client_name for the filters after us.
 * Loopback clients (127.0.0.0/8, ::1) are local software, not the
 * internet: no rDNS lookup, no RDNS_* symbol, and "localhost" is a fine
 * HELO for them.  `helo-checks no` turns the filter off.
 */
#include "config.h"
#include "filter.h"
#include "helo.h"
#include "conf.h"
#include "resolver.h"
#include "util.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

bool
helo_is_loopback(const char *ip)
{
	unsigned char a[16];
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (ip == NULL)
		return false;
	if (inet_pton(AF_INET, ip, a) == 1)
		return a[0] == 127;
	if (inet_pton(AF_INET6, ip, a) == 1) {
		static const unsigned char one[16] = { [15] = 1 };
		return !memcmp(a, one, 16) || (!memcmp(a, mapped, 12) && a[12] == 127);
	}
	return false;
}

const char *
helo_syntax(const char *h, bool loopback)
{
	unsigned char a[16];
	char hb[254];
	size_t len, lab = 0;
	bool dot = false;

	if (h == NULL || h[0] == '\0')
		return "HELO_NONE";
	len = strlen(h);
	if (h[0] == '[') {
		char lit[64];
		if (h[len - 1] != ']' || len - 2 >= sizeof(lit))
			return "HELO_BAD_LITERAL";
		memcpy(lit, h + 1, len - 2);
		lit[len - 2] = '\0';
		if (inet_pton(AF_INET, lit, a) == 1)
			return NULL;
		if (!strncasecmp(lit, "IPv6:", 5) && inet_pton(AF_INET6, lit + 5, a) == 1)
			return NULL;
		return "HELO_BAD_LITERAL";
	}
	if (inet_pton(AF_INET, h, a) == 1 || inet_pton(AF_INET6, h, a) == 1)
		return "HELO_BARE_IP";
	if (len > 253)
		return "HELO_BAD_SYNTAX";
	memcpy(hb, h, len + 1);
	if (len > 1 && hb[len - 1] == '.')
		hb[--len] = '\0';      /* one trailing dot is allowed */
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)hb[i];
		if (ch == '.') {
			if (lab == 0)
				return "HELO_BAD_SYNTAX";
			dot = true;
			lab = 0;
			continue;
		}
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		    ch == '-' || ch == '_'))
			return "HELO_BAD_SYNTAX";
		if (++lab > 63)
			return "HELO_BAD_SYNTAX";
	}
	if (lab == 0)
		return "HELO_BAD_SYNTAX";
	if (!strcasecmp(hb, "localhost") || !strncasecmp(hb, "localhost.", 10))
		return loopback ? NULL : "HELO_LOCALHOST";
	if (!dot)
		return "HELO_NOT_FQDN";
	return NULL;
}

enum helo_rdns
helo_fcrdns(struct resolver *r, const char *ip, char *name, size_t namesz, char *why,
    size_t whysz)
{
	unsigned char want[16];
	char rev[100];
	struct dns_answer ptr, fwd[HELO_RDNS_MAX_NAMES];
	const char *names[HELO_RDNS_MAX_NAMES];
	int types[HELO_RDNS_MAX_NAMES];
	size_t n = 0, alen;
	int fam, type;
	enum helo_rdns res;
	/* PTR and forward lookups together: one resolver-timeout at worst */
	uint64_t deadline = now_ms() + (uint64_t)resolver_timeout_ms(r);

	if (namesz)
		name[0] = '\0';
	if (whysz)
		why[0] = '\0';
	if (inet_pton(AF_INET, ip, want) == 1) {
		fam = AF_INET;
		type = DNS_T_A;
		alen = 4;
	} else if (inet_pton(AF_INET6, ip, want) == 1) {
		fam = AF_INET6;
		type = DNS_T_AAAA;
		alen = 16;
	} else {
		snprintf(why, whysz, "not an address");
		return HELO_RDNS_TEMPFAIL;
	}
	if (!dns_reverse_name(ip, fam == AF_INET ? "in-addr.arpa" : "ip6.arpa", rev, sizeof(rev))) {
		snprintf(why, whysz, "no reverse name");
		return HELO_RDNS_TEMPFAIL;
	}
	{
		const char *pn[1] = { rev };
		int pt[1] = { DNS_T_PTR };
		resolver_query_many_by(r, pn, pt, 1, &ptr, deadline);
	}
	switch (ptr.status) {
	case DNS_OK:
		break;
	case DNS_NXDOMAIN:
	case DNS_NODATA:
		snprintf(why, whysz, "no PTR for %s", ip);
		dns_answer_free(&ptr);
		return HELO_RDNS_NONE;
	default:
		snprintf(why, whysz, "PTR %s: %s", rev, ptr.why);
		dns_answer_free(&ptr);
		return HELO_RDNS_TEMPFAIL;
	}
	for (size_t i = 0; i < ptr.n && n < HELO_RDNS_MAX_NAMES; i++) {
		const char *t = ptr.text[i];
		if (t[0] == '\0' || !strcmp(t, ".") || strlen(t) > 253)
			continue;
		names[n] = t;
		types[n++] = type;
	}
	if (n == 0) {
		snprintf(why, whysz, "no usable PTR name for %s", ip);
		dns_answer_free(&ptr);
		return HELO_RDNS_NONE;
	}
	resolver_query_many_by(r, names, types, n, fwd, deadline);
	res = HELO_RDNS_MISMATCH;
	for (size_t i = 0; i < n && res != HELO_RDNS_OK; i++) {
		if (fwd[i].status == DNS_TEMPFAIL || fwd[i].status == DNS_PERMFAIL) {
			res = HELO_RDNS_TEMPFAIL;
			snprintf(why, whysz, "%s: %s", names[i], fwd[i].why);
			continue;
		}
		for (size_t k = 0; k < fwd[i].n; k++)
			if (fwd[i].len[k] == alen && !memcmp(fwd[i].data[k], want, alen)) {
				res = HELO_RDNS_OK;
				moat_strlcpy(name, names[i], namesz);
				break;
			}
	}
	if (res == HELO_RDNS_MISMATCH)
		snprintf(why, whysz, "%s (PTR %s%s) does not resolve back", ip, names[0],
		    n > 1 ? " ..." : "");
	for (size_t i = 0; i < n; i++)
		dns_answer_free(&fwd[i]);
	dns_answer_free(&ptr);
	return res;
}

struct helo_state {
	const struct moat_conf *c;
};

static int
helo_init(const struct moat_conf *c, void **state, char **err)
{
	struct helo_state *s;

	*state = NULL;
	*err = NULL;
	if (!c->helo_checks)
		return 0;
	s = xcalloc(1, sizeof(*s));
	s->c = c;
	*state = s;
	return 0;
}

static void
helo_fini(void *state)
{
	free(state);
}

static double
def_score(const char *sym)
{
	static const struct { const char *s; double v; } d[] = {
		{ "HELO_NONE", 1.0 }, { "HELO_BARE_IP", 1.5 }, { "HELO_BAD_LITERAL", 1.0 },
		{ "HELO_BAD_SYNTAX", 1.0 }, { "HELO_NOT_FQDN", 1.0 }, { "HELO_LOCALHOST", 2.0 },
		{ "RDNS_NONE", 1.0 }, { "RDNS_MISMATCH", 0.5 }, { "RDNS_TEMPFAIL", 0 },
	};
	for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++)
		if (!strcmp(d[i].s, sym))
			return d[i].v;
	return 0;
}

static void
helo_check(void *state, struct msg_ctx *x, struct verdict *v)
{
	/* the verified name lives until this thread's next message; msg_ctx
	 * does not outlive engine_run() */
	static _Thread_local char verified[256];
	struct helo_state *s = state;
	bool loop = helo_is_loopback(x->client_ip);
	const char *sym;
	char why[200], shown[80];

	if (x->trusted)
		return;
	if ((sym = helo_syntax(x->helo, loop)) != NULL) {
		/* the reason is a header-safe excerpt of what the client sent */
		size_t o = 0;
		for (const char *p = x->helo ? x->helo : ""; *p && o < sizeof(shown) - 1; p++)
			shown[o++] = ((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f) ? *p : '?';
		shown[o] = '\0';
		verdict_add(v, sym, filter_score(s->c, sym, def_score(sym)), shown);
	}
	if (loop || x->res == NULL || x->client_ip == NULL || x->client_ip[0] == '\0')
		return;
	switch (helo_fcrdns(x->res, x->client_ip, verified, sizeof(verified), why, sizeof(why))) {
	case HELO_RDNS_OK:
		x->client_name = verified;
		return;
	case HELO_RDNS_NONE:
		sym = "RDNS_NONE";
		break;
	case HELO_RDNS_MISMATCH:
		sym = "RDNS_MISMATCH";
		break;
	default:
		sym = "RDNS_TEMPFAIL";
		break;
	}
	verdict_add(v, sym, filter_score(s->c, sym, def_score(sym)), why);
}

const struct filter filter_helo = { "helo", FLT_HELO, helo_init, helo_check, helo_fini };
