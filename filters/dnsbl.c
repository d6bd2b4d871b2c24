/*
 * dnsbl.c - DNS block and allow lists: DNSBL/DNSWL on the client IP (IPv4
 * reversed, IPv6 in nibble form) and URIBL on the registered domains of the
 * URLs in the message (Public Suffix List via libpsl; bare IPv4 URLs are
 * looked up reversed).
 *
 * Runs in: a pool thread at end of DATA (check() BLOCKS on DNS).  Every
 * lookup of a message goes out in ONE resolver_query_many() batch, so the
 * whole filter costs one resolver-timeout at worst.  Input: the client IP
 * (ours) and the URLs of the message (untrusted): at most URIBL_MAX_DOMAINS
 * distinct domains per message, each a checked host name.
 *
 * Answers (docs/moat.conf.5, FILTERS):
 * - only A records in 127.0.0.0/8 count; an address with a `returns` entry
 *   scores that entry (each distinct address once), any other 127.x address
 *   scores the list's score once;
 * - 127.255.255.0/24 is an error code (Spamhaus: 252 typo, 254 public
 *   resolver, 255 excessive queries) and answers outside 127.0.0.0/8 are a
 *   broken or expired list: both give <PREFIX>_<ZONE>_ERROR (score 0), never
 *   a listing;
 * - SERVFAIL, timeout, REFUSED: <PREFIX>_<ZONE>_TEMPFAIL (score 0), the
 *   message flows.
 * `score SYMBOL N` overrides the total of a symbol.
 */
#include "config.h"
#include "filter.h"
#include "conf.h"
#include "log.h"
#include "mime.h"
#include "resolver.h"
#include "util.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libpsl.h>

#define URIBL_MAX_DOMAINS 20

struct dnsbl_state {
	const struct moat_conf *c;
	const psl_ctx_t *psl;           /* NULL without uribl lines */
	psl_ctx_t *psl_own;             /* psl_latest(): ours to free */
	bool    ip, uri;                /* any dnsbl/dnswl, any uribl */
};

static int
dnsbl_init(const struct moat_conf *c, void **state, char **err)
{
	struct dnsbl_state *s;

	*state = NULL;
	*err = NULL;
	if (c->ndnsbls == 0)
		return 0;
	s = xcalloc(1, sizeof(*s));
	s->c = c;
	for (size_t i = 0; i < c->ndnsbls; i++) {
		if (c->dnsbls[i].kind == DNSL_URI)
			s->uri = true;
		else
			s->ip = true;
	}
	if (s->uri) {
		/* the system's list if there is one (updated with the OS),
		 * else the copy built into libpsl */
		s->psl_own = psl_latest(NULL);
		s->psl = s->psl_own ? s->psl_own : psl_builtin();
		if (s->psl == NULL) {
			free(s);
			*err = xstrdup("uribl: no Public Suffix List (libpsl has none built in and "
			    "none is installed)");
			return -1;
		}
	}
	*state = s;
	return 0;
}

static void
dnsbl_fini(void *state)
{
	struct dnsbl_state *s = state;

	if (s == NULL)
		return;
	psl_free(s->psl_own);
	free(s);
}

/* "DNSBL_ZEN_SPAMHAUS_ORG" + suffix ("", "_TEMPFAIL", "_ERROR"): the zone
 * uppercased, every other character '_', cut to fit 63 characters */
static void
symbol_name(const struct dnsbl_list *l, const char *suffix, char *out, size_t outsz)
{
	static const char *pre[] = { [DNSL_BL] = "DNSBL_", [DNSL_WL] = "DNSWL_", [DNSL_URI] = "URIBL_" };
	size_t o, room, sl = strlen(suffix);

	o = moat_strlcpy(out, pre[l->kind], outsz);
	room = outsz > 64 ? 64 : outsz;         /* struct symbol name[64] */
	for (const char *q = l->zone; *q && o + sl + 1 < room; q++) {
		char ch = *q;
		if (ch >= 'a' && ch <= 'z')
			ch = (char)(ch - 'a' + 'A');
		else if (!(ch >= 'A' && ch <= 'Z') && !(ch >= '0' && ch <= '9'))
			ch = '_';
		out[o++] = ch;
	}
	out[o] = '\0';
	moat_strlcpy(out + o, suffix, outsz - o);
}

/* what one list answered for one name */
struct hit {
	bool    listed, error, tempfail;
	double  score;                  /* mapped + unmapped, before overrides */
	char    codes[96];              /* "127.0.0.2,127.0.0.4" */
	char    why[128];               /* error/tempfail detail */
};

static void
judge(const struct dnsbl_list *l, const struct dns_answer *a, struct hit *h)
{
	bool unmapped = false;
	double mapped = 0;
	unsigned char seen[DNS_MAX_RR][4];
	size_t nseen = 0;

	memset(h, 0, sizeof(*h));
	switch (a->status) {
	case DNS_NXDOMAIN:
	case DNS_NODATA:
		return;
	case DNS_TEMPFAIL:
	case DNS_PERMFAIL:
		h->tempfail = true;
		snprintf(h->why, sizeof(h->why), "%s", a->why[0] ? a->why : "lookup failed");
		return;
	case DNS_OK:
		break;
	}
	for (size_t i = 0; i < a->n; i++) {
		const unsigned char *ad = a->data[i];
		bool dup = false;
		if (a->len[i] != 4)
			continue;
		if (ad[0] != 127 || (ad[1] == 255 && ad[2] == 255)) {
			/* not a listing: a broken list or an error code */
			h->error = true;
			snprintf(h->why, sizeof(h->why), "%s %s", a->text[i],
			    ad[0] != 127 ? "outside 127.0.0.0/8, ignored" : "error code from the list");
			continue;
		}
		for (size_t k = 0; k < nseen; k++)
			if (!memcmp(seen[k], ad, 4))
				dup = true;
		if (dup)
			continue;
		memcpy(seen[nseen++], ad, 4);
		size_t cl = strlen(h->codes);
		if (cl + strlen(a->text[i]) + 2 < sizeof(h->codes))
			snprintf(h->codes + cl, sizeof(h->codes) - cl, "%s%s", cl ? "," : "", a->text[i]);
		h->listed = true;
		size_t r;
		for (r = 0; r < l->nrets; r++)
			if (!memcmp(l->rets[r].addr, ad, 4)) {
				mapped += l->rets[r].score;
				break;
			}
		if (r == l->nrets)
			unmapped = true;
	}
	h->score = mapped + (unmapped ? l->score : 0);
}

/* the registered domain of a URL host (or the reversed IPv4 address) into
 * out; false when the host is not something a URIBL lists */
static bool
uri_key(const struct dnsbl_state *s, const char *host, char *out, size_t outsz)
{
	char h[256], ip[64];
	size_t len = strlen(host);
	const char *reg;

	if (len == 0 || len >= sizeof(h))
		return false;
	/* IP literal: [v6] is unbracketed; URIBLs list IPv4 reversed */
	if (host[0] == '[' && host[len - 1] == ']' && len - 2 < sizeof(ip)) {
		memcpy(ip, host + 1, len - 2);
		ip[len - 2] = '\0';
		return dns_reverse_name(ip, "", out, outsz);
	}
	if (dns_reverse_name(host, "", out, outsz))
		return true;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)host[i];
		/* ASCII host names only (an IDN would need its A-label) */
		if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' ||
		    ch == '_'))
			return false;
		h[i] = (char)ch;
	}
	h[len] = '\0';
	while (len > 0 && h[len - 1] == '.')
		h[--len] = '\0';
	if (len == 0 || strchr(h, '.') == NULL || strstr(h, ".."))
		return false;
	reg = psl_registrable_domain(s->psl, h);
	if (reg == NULL)
		return false;           /* a public suffix itself, or nonsense */
	return moat_strlcpy(out, reg, outsz) < outsz;
}

static void
dnsbl_check(void *state, struct msg_ctx *x, struct verdict *v)
{
	struct dnsbl_state *s = state;
	const struct moat_conf *c = s->c;
	char rev[80];
	char doms[URIBL_MAX_DOMAINS][256];
	size_t ndoms = 0, nq = 0, maxq;
	bool have_ip;
	char **names;
	int *types;
	size_t *qlist, *qdom;           /* per query: the list, the domain (or SIZE_MAX) */
	struct dns_answer *ans;

	if (x->trusted || x->res == NULL)
		return;
	have_ip = s->ip && !x->client_done && x->client_ip &&
	    dns_reverse_name(x->client_ip, "", rev, sizeof(rev));
	if (s->uri && x->mime) {
		size_t nu = mime_url_count(x->mime);
		for (size_t i = 0; i < nu && ndoms < URIBL_MAX_DOMAINS; i++) {
			const struct mime_url *u = mime_url_at(x->mime, i);
			char d[256];
			bool dup = false;
			if (u == NULL || u->host == NULL || !uri_key(s, u->host, d, sizeof(d)))
				continue;
			for (size_t k = 0; k < ndoms && !dup; k++)
				dup = !strcmp(doms[k], d);
			if (!dup)
				moat_strlcpy(doms[ndoms++], d, sizeof(doms[0]));
		}
	}
	maxq = c->ndnsbls * (ndoms + 1);
	names = xcalloc(maxq + 1, sizeof(*names));
	types = xcalloc(maxq + 1, sizeof(*types));
	qlist = xcalloc(maxq + 1, sizeof(*qlist));
	qdom = xcalloc(maxq + 1, sizeof(*qdom));
	for (size_t i = 0; i < c->ndnsbls; i++) {
		const struct dnsbl_list *l = &c->dnsbls[i];
		char nm[300];
		if (l->kind != DNSL_URI) {
			if (!have_ip || (size_t)snprintf(nm, sizeof(nm), "%s.%s", rev, l->zone) >= 254)
				continue;
			names[nq] = xstrdup(nm);
			types[nq] = DNS_T_A;
			qlist[nq] = i;
			qdom[nq++] = SIZE_MAX;
			continue;
		}
		for (size_t d = 0; d < ndoms; d++) {
			if ((size_t)snprintf(nm, sizeof(nm), "%s.%s", doms[d], l->zone) >= 254)
				continue;       /* too long a name for DNS */
			names[nq] = xstrdup(nm);
			types[nq] = DNS_T_A;
			qlist[nq] = i;
			qdom[nq++] = d;
		}
	}
	if (nq == 0)
		goto out;
	ans = xcalloc(nq, sizeof(*ans));
	resolver_query_many(x->res, (const char *const *)names, types, nq, ans);

	/* one symbol per list: a listing, an error, a lookup failure */
	for (size_t i = 0; i < c->ndnsbls; i++) {
		const struct dnsbl_list *l = &c->dnsbls[i];
		char sym[64], reason[160];
		double score = 0;
		bool listed = false, error = false, tempfail = false;
		char why[128] = "", terr[128] = "";

		reason[0] = '\0';
		for (size_t k = 0; k < nq; k++) {
			struct hit h;
			if (qlist[k] != i)
				continue;
			judge(l, &ans[k], &h);
			if (h.listed) {
				size_t rl = strlen(reason);
				if (qdom[k] == SIZE_MAX)
					snprintf(reason, sizeof(reason), "%s", h.codes);
				else if (rl + strlen(doms[qdom[k]]) + strlen(h.codes) + 3 < sizeof(reason))
					snprintf(reason + rl, sizeof(reason) - rl, "%s%s=%s", rl ? " " : "",
					    doms[qdom[k]], h.codes);
				/* several domains on one URIBL: the strongest counts */
				if (!listed || (l->score >= 0 ? h.score > score : h.score < score))
					score = h.score;
				listed = true;
			}
			if (h.error && !error) {
				error = true;
				if (qdom[k] == SIZE_MAX)
					snprintf(why, sizeof(why), "%s", h.why);
				else
					snprintf(why, sizeof(why), "%s: %s", doms[qdom[k]], h.why);
			}
			if (h.tempfail && !tempfail) {
				tempfail = true;
				snprintf(terr, sizeof(terr), "%s: %s", names[k], h.why);
			}
		}
		if (listed) {
			symbol_name(l, "", sym, sizeof(sym));
			verdict_add(v, sym, filter_score(c, sym, score), reason);
		}
		if (error) {
			symbol_name(l, "_ERROR", sym, sizeof(sym));
			verdict_add(v, sym, filter_score(c, sym, 0), why);
			log_warnx("dnsbl event=list-error qid=%s zone=%s detail=\"%s\"", x->qid, l->zone,
			    esc(why));
		}
		if (tempfail) {
			symbol_name(l, "_TEMPFAIL", sym, sizeof(sym));
			verdict_add(v, sym, filter_score(c, sym, 0), terr);
		}
	}
	for (size_t k = 0; k < nq; k++)
		dns_answer_free(&ans[k]);
	free(ans);
out:
	for (size_t k = 0; k < nq; k++)
		free(names[k]);
	free(names);
	free(types);
	free(qlist);
	free(qdom);
}

const struct filter filter_dnsbl = { "dnsbl", FLT_CONNECT, dnsbl_init, dnsbl_check, dnsbl_fini };
