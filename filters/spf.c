/*
 * spf.c - the SPF filter (RFC 7208) on libspf2 (see spf.h, docs/spf.md).
 *
 * libspf2 evaluates; everything it reads is ours:
 *   - its DNS layer is a custom SPF_dns_server_t (layer_lookup) that asks
 *     moat's resolver, counts the DNS-querying terms (limit 10) and the
 *     void lookups (limit 2) and stops the evaluation when a limit is hit;
 *   - its record fetch is our get_spf hook (layer_get_spf), used for the
 *     first record, include and redirect: we select the one "v=spf1"
 *     record, check it against the RFC 7208 grammar (spf_record.c) and hand
 *     libspf2 only the canonical text built there;
 *   - we call SPF_record_interpret() ourselves: SPF_request_query_mailfrom()
 *     passes every loopback client without looking.
 * One SPF_server_t, request and response per evaluation, so pool threads
 * share nothing of libspf2's.  libspf2's fatal error handler (an assertion
 * failed) jumps back here instead of exiting: that evaluation is a
 * temperror, leaks what libspf2 held, and is logged.
 * Runs in: pool threads (check) and the CLI (`moat spf check`).
 */
#include "config.h"
#include "spf.h"
#include "spf_record.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "resolver.h"
#include "util.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <spf2/spf.h>
#include <spf2/spf_dns.h>

#define SPF_LIMIT_LOOKUPS  10   /* RFC 7208 4.6.4 */
#define SPF_LIMIT_VOIDS    2
#define SPF_LIMIT_TARGETS  10   /* MX names, PTR names used */

/* one evaluation; the hook of our DNS layer */
struct job {
	SPF_dns_server_t layer;
	struct resolver *res;
	bool    v6;
	bool    top;                    /* the first record was fetched */
	unsigned lookups, voids;
	bool    limit;                  /* a processing limit: permerror */
	bool    perm;                   /* a record was rejected: permerror */
	bool    temp;                   /* DNS failed: temperror */
	char    why[160];
	uint64_t deadline;
	/* names from the last MX/PTR answer: their address lookups are part
	 * of that term, not terms of their own */
	char    target[SPF_LIMIT_TARGETS][256];
	int     ntarget, itarget;
	bool    target_ptr;             /* they came from PTR: errors skip */
	unsigned char addr[16];         /* the client, 4 or 16 bytes */
	char    cur[256];               /* storage for the first cur_dom */
	/* libspf2's objects (here, not in locals: a longjmp may come back) */
	SPF_server_t *srv;
	SPF_request_t *req;
	SPF_response_t *resp;
	bool    have_exp;               /* the explanation came from exp= */
};

static void
job_why(struct job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
job_why(struct job *j, const char *fmt, ...)
{
	va_list ap;

	if (j->why[0])
		return;                 /* the first reason is the one */
	va_start(ap, fmt);
	vsnprintf(j->why, sizeof(j->why), fmt, ap);
	va_end(ap);
}

/* ---- libspf2's message handlers: never print, never exit ---- */

static _Thread_local sigjmp_buf *spf_jmp;

static void spf_fatal(const char *, int, const char *) __attribute__((noreturn));

static void
spf_fatal(const char *file, int line, const char *msg)
{
	if (spf_jmp != NULL) {
		log_warnx("spf: libspf2 internal error at %s:%d: %s (evaluation abandoned)",
		    file ? file : "?", line, msg ? msg : "?");
		siglongjmp(*spf_jmp, 1);
	}
	fatalx("spf: libspf2 internal error at %s:%d: %s", file ? file : "?", line, msg ? msg : "?");
}

static void
spf_quiet(const char *file, int line, const char *msg)
{
	(void)file;
	(void)line;
	(void)msg;
}

static pthread_once_t spf_once = PTHREAD_ONCE_INIT;

static void
spf_handlers(void)
{
	SPF_error_handler = spf_fatal;
	SPF_warning_handler = spf_quiet;
	SPF_info_handler = spf_quiet;
	SPF_debug_handler = spf_quiet;
}

/* ---- names ---- */

/*
 * a name for a query: the final dot removed, cut on the left to 253
 * characters (RFC 7208 4.8 for expanded macros); false if a label is
 * empty or longer than 63 (no query: such a name does not exist)
 */
static bool
query_name(const char *in, char *out, size_t outsz)
{
	size_t len = strlen(in), lab = 0;

	if (len > 0 && in[len - 1] == '.')
		len--;
	while (len > 253) {
		const char *dot = memchr(in, '.', len);
		if (dot == NULL)
			return false;
		len -= (size_t)(dot + 1 - in);
		in = dot + 1;
	}
	if (len == 0 || len >= outsz)
		return false;
	for (size_t i = 0; i <= len; i++) {
		if (i == len || in[i] == '.') {
			if (lab == 0 || lab > 63)
				return false;
			lab = 0;
		} else if ((unsigned char)in[i] < 0x20 || (unsigned char)in[i] >= 0x7f ||
		    in[i] == '\\')
			return false;
		else
			lab++;
	}
	memcpy(out, in, len);
	out[len] = '\0';
	return true;
}

/* ---- our DNS layer ---- */

static SPF_dns_rr_t *
rr_status(SPF_dns_server_t *d, const char *name, ns_type type, int herrno)
{
	return SPF_dns_rr_new_init(d, name, type, 0, herrno);
}

/* the suffix spf_record.c puts on the domain of an a or mx term whose
 * prefix length for the client's family is 0 (see spf_record.h) */
static bool
strip_cidr0(const char *in, char *out, size_t outsz)
{
	size_t l = strlen(in), sl = strlen(SPF_CIDR0_SUFFIX);

	if (l > 0 && in[l - 1] == '.')
		l--;
	if (l <= sl || strncasecmp(in + l - sl, SPF_CIDR0_SUFFIX, sl) != 0 || l - sl >= outsz)
		return false;
	memcpy(out, in, l - sl);
	out[l - sl] = '\0';
	return true;
}

static SPF_dns_rr_t *
layer_lookup(SPF_dns_server_t *d, const char *domain, ns_type type, int should_cache)
{
	struct job *j = d->hook;
	struct dns_answer a;
	SPF_dns_rr_t *rr;
	char name[256], base[300];
	bool counted = false, target = false, zero;
	int herrno, n = 0;

	(void)should_cache;
	if (j->limit || j->temp)
		return rr_status(d, domain, type, TRY_AGAIN);
	if (now_ms() > j->deadline) {
		j->temp = true;
		job_why(j, "time budget exhausted");
		return rr_status(d, domain, type, TRY_AGAIN);
	}
	switch (type) {
	case ns_t_a:
	case ns_t_aaaa:
		if (j->itarget < j->ntarget && strcasecmp(domain, j->target[j->itarget]) == 0) {
			j->itarget++;
			target = true;
			break;
		}
		/* FALLTHROUGH */
	case ns_t_mx:
	case ns_t_ptr:
		j->ntarget = j->itarget = 0;
		counted = true;
		break;
	default:                /* TXT for exp=: not a term */
		break;
	}
	if (counted && ++j->lookups > SPF_LIMIT_LOOKUPS) {
		j->limit = true;
		job_why(j, "more than %d DNS-querying terms (RFC 7208 4.6.4)", SPF_LIMIT_LOOKUPS);
		return rr_status(d, domain, type, TRY_AGAIN);
	}
	zero = strip_cidr0(domain, base, sizeof(base));
	if (!query_name(zero ? base : domain, name, sizeof(name))) {
		if (counted && ++j->voids > SPF_LIMIT_VOIDS) {
			j->limit = true;
			job_why(j, "more than %d void lookups (RFC 7208 4.6.4)", SPF_LIMIT_VOIDS);
			return rr_status(d, domain, type, TRY_AGAIN);
		}
		return rr_status(d, domain, type, HOST_NOT_FOUND);
	}
	switch (resolver_query(j->res, name, type, &a)) {
	case DNS_OK:
		herrno = NETDB_SUCCESS;
		break;
	case DNS_NXDOMAIN:
		herrno = HOST_NOT_FOUND;
		break;
	case DNS_NODATA:
		herrno = NO_DATA;
		break;
	default:
		dns_answer_free(&a);
		if (target && j->target_ptr) {
			/* RFC 7208 5.5: a PTR name that fails is skipped */
			return rr_status(d, domain, type, HOST_NOT_FOUND);
		}
		j->temp = true;
		job_why(j, "DNS %s for %.100s", a.why[0] ? a.why : "failure", name);
		return rr_status(d, domain, type, TRY_AGAIN);
	}
	if (counted && herrno != NETDB_SUCCESS && ++j->voids > SPF_LIMIT_VOIDS) {
		j->limit = true;
		job_why(j, "more than %d void lookups (RFC 7208 4.6.4)", SPF_LIMIT_VOIDS);
		dns_answer_free(&a);
		return rr_status(d, domain, type, TRY_AGAIN);
	}
	if (type == ns_t_mx && a.n > SPF_LIMIT_TARGETS) {
		/* RFC 7208 4.6.4: more than 10 MX names is a permerror */
		j->limit = true;
		job_why(j, "more than %d MX records for %.100s", SPF_LIMIT_TARGETS, name);
		dns_answer_free(&a);
		return rr_status(d, domain, type, TRY_AGAIN);
	}
	if ((rr = rr_status(d, domain, type, herrno)) == NULL) {
		dns_answer_free(&a);
		return NULL;
	}
	for (size_t i = 0; i < a.n; i++) {
		const char *t = a.text[i];
		size_t l;
		switch (type) {
		case ns_t_a:
		case ns_t_aaaa: {
			size_t al = type == ns_t_a ? 4 : 16;
			if (a.len[i] != al || SPF_dns_rr_buf_realloc(rr, n, al))
				continue;
			/* prefix 0: any address of the name matches (RFC 7208
			 * 5.3), which libspf2 cannot express: the client's */
			memcpy(type == ns_t_a ? (void *)&rr->rr[n]->a : (void *)&rr->rr[n]->aaaa,
			    zero && j->v6 == (type == ns_t_aaaa) ? j->addr : a.data[i], al);
			break;
		}
		case ns_t_mx:
			/* "PREF NAME" */
			if ((t = strchr(t, ' ')) == NULL)
				continue;
			t++;
			/* FALLTHROUGH */
		case ns_t_ptr:
			if (n >= SPF_LIMIT_TARGETS)
				continue;       /* RFC 7208 5.5: the first 10 names */
			if (!query_name(t, base, sizeof(base) - sizeof(SPF_CIDR0_SUFFIX)))
				moat_strlcpy(base, "invalid.", sizeof(base));
			snprintf(j->target[n], sizeof(j->target[n]), "%s%s", base,
			    zero && type == ns_t_mx ? SPF_CIDR0_SUFFIX : "");
			t = j->target[n];
			/* FALLTHROUGH */
		default:
			l = strlen(t);
			if (SPF_dns_rr_buf_realloc(rr, n, l + 1))
				continue;
			memcpy(rr->rr[n]->txt, t, l + 1);
			break;
		}
		n++;
	}
	rr->num_rr = n;
	if (type == ns_t_mx || type == ns_t_ptr) {
		j->ntarget = n;
		j->itarget = 0;
		j->target_ptr = type == ns_t_ptr;
	}
	dns_answer_free(&a);
	return rr;
}

/* the record of the current domain: the first one, include and redirect */
static SPF_errcode_t
layer_get_spf(SPF_server_t *srv, SPF_request_t *req, SPF_response_t *resp,
    SPF_record_t **recp)
{
	struct job *j = srv->resolver->hook;
	struct dns_answer a;
	char name[256], *canon, *rec = NULL;
	const char *why;
	size_t nrec = 0, reclen = 0;
	SPF_errcode_t err;

	*recp = NULL;
	if (j->limit || j->temp)
		return SPF_E_DNS_ERROR;
	if (j->top) {
		/* include or redirect: a DNS-querying term */
		j->ntarget = j->itarget = 0;
		if (++j->lookups > SPF_LIMIT_LOOKUPS) {
			j->limit = true;
			job_why(j, "more than %d DNS-querying terms (RFC 7208 4.6.4)",
			    SPF_LIMIT_LOOKUPS);
			return SPF_E_DNS_ERROR;
		}
	}
	bool top = !j->top;
	j->top = true;
	if (req->cur_dom == NULL || !query_name(req->cur_dom, name, sizeof(name))) {
		/* RFC 7208 4.3: a malformed domain has no record */
		resp->result = SPF_RESULT_NONE;
		if (!top)
			job_why(j, "include/redirect of an invalid domain");
		return SPF_E_NOT_SPF;
	}
	if (now_ms() > j->deadline) {
		j->temp = true;
		job_why(j, "time budget exhausted");
		return SPF_E_DNS_ERROR;
	}
	switch (resolver_query(j->res, name, DNS_T_TXT, &a)) {
	case DNS_OK:
		break;
	case DNS_NXDOMAIN:
	case DNS_NODATA:
		dns_answer_free(&a);
		resp->result = SPF_RESULT_NONE;
		if (!top)
			job_why(j, "no SPF record at %.100s", name);
		return SPF_E_NOT_SPF;
	default:
		/* RFC 7208 4.4: SERVFAIL, other rcodes, timeout */
		j->temp = true;
		job_why(j, "DNS %s for %.100s TXT", a.why[0] ? a.why : "failure", name);
		dns_answer_free(&a);
		return SPF_E_DNS_ERROR;
	}
	/* the character-strings of each RR joined (RFC 7208 3.3), from the
	 * wire: a NUL inside is kept and makes the record invalid */
	for (size_t i = 0; i < a.n; i++) {
		size_t k = 0, o = 0;
		char *t = xmalloc(a.len[i] + 1);
		while (k < a.len[i]) {
			size_t l = a.data[i][k++];
			if (k + l > a.len[i])
				break;
			memcpy(t + o, a.data[i] + k, l);
			o += l;
			k += l;
		}
		t[o] = '\0';
		if (spf_record_is_v1(t, o)) {
			nrec++;
			free(rec);
			rec = t;
			reclen = o;
		} else
			free(t);
	}
	dns_answer_free(&a);
	if (nrec == 0) {
		resp->result = SPF_RESULT_NONE;
		if (!top)
			job_why(j, "no SPF record at %.100s", name);
		return SPF_E_NOT_SPF;
	}
	if (nrec > 1) {
		free(rec);
		j->perm = true;
		job_why(j, "more than one SPF record at %.100s (RFC 7208 4.5)", name);
		return SPF_E_MULTIPLE_RECORDS;
	}
	canon = xmalloc(SPF_RECORD_MAX + 64);
	if (spf_record_check(rec, reclen, j->v6, canon, SPF_RECORD_MAX + 64, &why) < 0) {
		j->perm = true;
		job_why(j, "%s at %.100s", why, name);
		free(canon);
		free(rec);
		return SPF_E_SYNTAX;
	}
	free(rec);
	err = SPF_record_compile(srv, resp, recp, canon);
	free(canon);
	if (err != SPF_E_SUCCESS) {
		j->perm = true;
		job_why(j, "record of %.100s: %s", name, SPF_strerror(err));
		if (*recp) {
			SPF_record_free(*recp);
			*recp = NULL;
		}
		return SPF_E_SYNTAX;
	}
	return SPF_E_SUCCESS;
}

/* the explanation of a fail (RFC 7208 6.2): the TXT record of the exp=
 * name, expanded by us (libspf2 mangles spaces and macros in it); any
 * problem means no explanation, and the caller uses its default */
static SPF_errcode_t
layer_get_exp(SPF_server_t *srv, const char *domain, char **bufp, size_t *buflenp)
{
	struct job *j = srv->resolver->hook;
	SPF_request_t *req = j->req;
	struct spf_macro_vals mv;
	struct dns_answer a;
	char name[256], ipdots[80], ipc[INET6_ADDRSTRLEN], ts[24], out[1024], *t;
	const char *why;
	size_t k = 0, o = 0;

	if (req == NULL || domain == NULL || !query_name(domain, name, sizeof(name)))
		return SPF_E_NOT_SPF;
	if (resolver_query(j->res, name, DNS_T_TXT, &a) != DNS_OK || a.n != 1) {
		dns_answer_free(&a);
		return SPF_E_NOT_SPF;
	}
	t = xmalloc(a.len[0] + 1);
	while (k < a.len[0]) {
		size_t l = a.data[0][k++];
		if (k + l > a.len[0])
			break;
		memcpy(t + o, a.data[0] + k, l);
		o += l;
		k += l;
	}
	t[o] = '\0';
	dns_answer_free(&a);

	memset(&mv, 0, sizeof(mv));
	mv.s = req->env_from;
	mv.l = req->env_from_lp;
	mv.o = req->env_from_dp;
	mv.d = req->cur_dom;
	mv.h = req->helo_dom;
	mv.r = srv->rec_dom;
	snprintf(ts, sizeof(ts), "%lld", (long long)time(NULL));
	mv.t = ts;
	if (j->v6) {
		static const char hx[] = "0123456789abcdef";
		for (int i = 0; i < 16; i++) {
			ipdots[i * 4] = hx[j->addr[i] >> 4];
			ipdots[i * 4 + 1] = '.';
			ipdots[i * 4 + 2] = hx[j->addr[i] & 15];
			ipdots[i * 4 + 3] = '.';
		}
		ipdots[63] = '\0';
		inet_ntop(AF_INET6, j->addr, ipc, sizeof(ipc));
		mv.v = "ip6";
	} else {
		inet_ntop(AF_INET, j->addr, ipc, sizeof(ipc));
		moat_strlcpy(ipdots, ipc, sizeof(ipdots));
		mv.v = "in-addr";
	}
	mv.i = ipdots;
	mv.c = ipc;
	/* %{p} costs DNS queries: only when the text asks for it */
	mv.p = "unknown";
	if (strstr(t, "%{p") || strstr(t, "%{P")) {
		const char *p = SPF_request_get_client_dom(req);
		if (p && *p)
			mv.p = p;
	}
	if (spf_expand_exp(t, o, &mv, out, sizeof(out), &why) < 0) {
		free(t);
		return SPF_E_NOT_SPF;
	}
	free(t);
	if (*buflenp < strlen(out) + 1) {
		char *nb = realloc(*bufp, strlen(out) + 1);
		if (nb == NULL)
			return SPF_E_NO_MEMORY;
		*bufp = nb;
		*buflenp = strlen(out) + 1;
	}
	memcpy(*bufp, out, strlen(out) + 1);
	j->have_exp = true;
	return SPF_E_SUCCESS;
}

static enum auth_res
map_result(SPF_result_t r)
{
	switch (r) {
	case SPF_RESULT_PASS:      return AR_PASS;
	case SPF_RESULT_FAIL:      return AR_FAIL;
	case SPF_RESULT_SOFTFAIL:  return AR_SOFTFAIL;
	case SPF_RESULT_NEUTRAL:   return AR_NEUTRAL;
	case SPF_RESULT_NONE:      return AR_NONE;
	case SPF_RESULT_TEMPERROR: return AR_TEMPERROR;
	default:                   return AR_PERMERROR;     /* incl. "(invalid)" */
	}
}

/* printable ASCII only, for headers and logs */
static void
clean(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			*s = '?';
}

void
spf_check_host(struct resolver *res, const struct spf_in *in, const char *domain,
    const char *sender, struct spf_out *o)
{
	struct job *j;
	SPF_server_t *srv;
	SPF_request_t *req;
	SPF_response_t *resp;
	SPF_record_t *rec = NULL;
	SPF_errcode_t err;
	sigjmp_buf jb;
	unsigned char bin[16];
	char ip[INET6_ADDRSTRLEN];
	bool v6;

	pthread_once(&spf_once, spf_handlers);
	memset(o->why, 0, sizeof(o->why));
	o->expl[0] = '\0';
	o->expl_default = false;
	moat_strlcpy(o->domain, domain, sizeof(o->domain));
	clean(o->domain);
	o->res = AR_NONE;
	o->lookups = o->voids = 0;

	if (!spf_domain_ok(domain)) {
		snprintf(o->why, sizeof(o->why), "not a valid domain (RFC 7208 4.3)");
		return;
	}
	/* an IPv4-mapped IPv6 address is the IPv4 client (RFC 7208 5) */
	moat_strlcpy(ip, in->ip ? in->ip : "", sizeof(ip));
	if (strncasecmp(ip, "::ffff:", 7) == 0 && strchr(ip + 7, '.') != NULL)
		memmove(ip, ip + 7, strlen(ip + 7) + 1);
	if (inet_pton(AF_INET, ip, bin) == 1)
		v6 = false;
	else if (inet_pton(AF_INET6, ip, bin) == 1)
		v6 = true;
	else {
		o->res = AR_PERMERROR;
		snprintf(o->why, sizeof(o->why), "no valid client address");
		return;
	}

	j = xcalloc(1, sizeof(*j));
	j->res = res;
	j->v6 = v6;
	memcpy(j->addr, bin, v6 ? 16 : 4);
	j->deadline = now_ms() + (uint64_t)(in->budget_ms > 0 ? in->budget_ms : 20000);
	j->layer.destroy = NULL;        /* ours: SPF_server_free leaves it */
	j->layer.lookup = layer_lookup;
	j->layer.get_spf = layer_get_spf;
	j->layer.get_exp = layer_get_exp;
	j->layer.name = "moat";
	j->layer.hook = j;
	moat_strlcpy(j->cur, domain, sizeof(j->cur));

	spf_jmp = &jb;
	if (sigsetjmp(jb, 0) != 0) {
		/* libspf2 gave up on an assertion: its objects are abandoned */
		spf_jmp = NULL;
		o->res = AR_TEMPERROR;
		snprintf(o->why, sizeof(o->why), "libspf2 internal error");
		free(j);
		return;
	}
	if ((srv = j->srv = SPF_server_new_dns(&j->layer, 0)) == NULL)
		goto nomem;
	SPF_server_set_rec_dom(srv, in->receiver && *in->receiver ? in->receiver : "localhost");
	if ((req = j->req = SPF_request_new(srv)) == NULL)
		goto nomem;
	if (v6)
		SPF_request_set_ipv6_str(req, ip);
	else
		SPF_request_set_ipv4_str(req, ip);
	/* what the macros expand (%{s} %{l} %{o} %{h}) is bounded and plain
	 * ASCII before libspf2 sees it: an oversized or 8-bit local part
	 * becomes "postmaster", a HELO name that is not a domain "unknown" */
	{
		char from[400];
		const char *at = strrchr(sender, '@');
		size_t ll = at ? (size_t)(at - sender) : 0;
		bool plain = ll <= 64;
		for (size_t i = 0; plain && i < ll; i++)
			if ((unsigned char)sender[i] < 0x20 || (unsigned char)sender[i] >= 0x7f)
				plain = false;
		snprintf(from, sizeof(from), "%.*s@%s", plain && ll ? (int)ll : 10,
		    plain && ll ? sender : "postmaster", j->cur);
		if (SPF_request_set_env_from(req, from) != 0 ||
		    SPF_request_set_helo_dom(req, in->helo && spf_domain_ok(in->helo) ?
		    in->helo : "unknown") != 0)
			goto nomem;
	}
	if ((resp = j->resp = SPF_response_new(req)) == NULL)
		goto nomem;
	req->cur_dom = j->cur;
	err = SPF_server_get_record(srv, req, resp, &rec);
	if (err == SPF_E_SUCCESS && rec != NULL) {
		resp->spf_record_exp = rec;
		err = SPF_record_interpret(rec, req, resp, 0);
		o->res = map_result(SPF_response_result(resp));
		if (o->res == AR_FAIL) {
			if (j->have_exp && SPF_response_get_explanation(resp))
				moat_strlcpy(o->expl, SPF_response_get_explanation(resp),
				    sizeof(o->expl));
			else {
				o->expl_default = true;
				snprintf(o->expl, sizeof(o->expl),
				    "%s does not designate %s as permitted sender", o->domain, ip);
			}
		}
		if (!j->why[0])
			snprintf(j->why, sizeof(j->why), "%s",
			    SPF_response_reason(resp) == SPF_REASON_DEFAULT ? "no term matched" :
			    o->res == AR_PERMERROR || o->res == AR_TEMPERROR ? SPF_strerror(err) :
			    "mechanism matched");
		SPF_record_free(rec);
		resp->spf_record_exp = NULL;
	} else if (j->perm || j->limit)
		o->res = AR_PERMERROR;
	else if (err == SPF_E_DNS_ERROR || j->temp)
		o->res = AR_TEMPERROR;
	else {
		o->res = AR_NONE;
		if (!j->why[0])
			snprintf(j->why, sizeof(j->why), "no SPF record");
	}
	/* a limit stops libspf2 with a DNS error: the result is permerror */
	if (j->limit)
		o->res = AR_PERMERROR;
	goto out;
nomem:
	o->res = AR_TEMPERROR;
	job_why(j, "out of memory");
out:
	spf_jmp = NULL;
	moat_strlcpy(o->why, j->why, sizeof(o->why));
	clean(o->why);
	clean(o->expl);
	o->lookups = j->lookups;
	o->voids = j->voids;
	if (j->resp)
		SPF_response_free(j->resp);
	if (j->req)
		SPF_request_free(j->req);
	if (j->srv)
		SPF_server_free(j->srv);
	free(j);
}

static bool
is_fqdn(const char *h)
{
	return h && *h && h[0] != '[' && strchr(h, '.') != NULL && spf_domain_ok(h);
}

void
spf_eval(struct resolver *res, const struct spf_in *in, struct spf_out *mfrom,
    struct spf_out *helo)
{
	const char *h = in->helo ? in->helo : "";
	const char *s = in->sender ? in->sender : "";
	uint64_t t0 = now_ms();
	char pm[300];

	memset(mfrom, 0, sizeof(*mfrom));
	memset(helo, 0, sizeof(*helo));
	helo->helo = true;
	if (is_fqdn(h)) {
		snprintf(pm, sizeof(pm), "postmaster@%s", h);
		spf_check_host(res, in, h, pm, helo);
	} else {
		helo->res = AR_NONE;
		moat_strlcpy(helo->domain, h, sizeof(helo->domain));
		clean(helo->domain);
		snprintf(helo->why, sizeof(helo->why), "HELO name is not a domain name");
	}
	if (*s == '\0') {
		/* RFC 7208 2.4: the null sender is checked as postmaster@HELO */
		*mfrom = *helo;
		return;
	}
	const char *at = strrchr(s, '@');
	const char *dom = at ? at + 1 : s;
	/* one time budget for both identities: the client is waiting */
	struct spf_in rest = *in;
	uint64_t spent = now_ms() - t0;
	long long budget = in->budget_ms > 0 ? in->budget_ms : 20000;
	rest.budget_ms = budget - (long long)spent;
	if (rest.budget_ms < 1) {
		memset(mfrom, 0, sizeof(*mfrom));
		mfrom->res = AR_TEMPERROR;
		moat_strlcpy(mfrom->domain, dom, sizeof(mfrom->domain));
		clean(mfrom->domain);
		snprintf(mfrom->why, sizeof(mfrom->why), "time budget exhausted");
		return;
	}
	spf_check_host(res, &rest, dom, s, mfrom);
}

/* ---- the filter ---- */

struct spf_state {
	const struct moat_conf *conf;
};

static int
spf_init(const struct moat_conf *c, void **state, char **err)
{
	struct spf_state *st;

	*err = NULL;
	*state = NULL;
	if (!c->spf)
		return 0;
	pthread_once(&spf_once, spf_handlers);
	st = xcalloc(1, sizeof(*st));
	st->conf = c;
	*state = st;
	return 0;
}

static void
spf_fini(void *state)
{
	free(state);
}

struct sym_def {
	enum auth_res res;
	const char *mfrom, *helo;
	double  dmfrom, dhelo;
};

/* default scores, SpamAssassin/rspamd-like */
static const struct sym_def syms[] = {
	{ AR_PASS,      "SPF_PASS",      "SPF_HELO_PASS",      -0.1, 0.0 },
	{ AR_FAIL,      "SPF_FAIL",      "SPF_HELO_FAIL",       3.0, 1.0 },
	{ AR_SOFTFAIL,  "SPF_SOFTFAIL",  "SPF_HELO_SOFTFAIL",   1.0, 0.5 },
	{ AR_NEUTRAL,   "SPF_NEUTRAL",   "SPF_HELO_NEUTRAL",    0.0, 0.0 },
	{ AR_NONE,      "SPF_NONE",      "SPF_HELO_NONE",       0.0, 0.0 },
	{ AR_TEMPERROR, "SPF_TEMPERROR", "SPF_HELO_TEMPERROR",  0.0, 0.0 },
	{ AR_PERMERROR, "SPF_PERMERROR", "SPF_HELO_PERMERROR",  0.5, 0.1 },
};

static const struct sym_def *
sym_for(enum auth_res r)
{
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++)
		if (syms[i].res == r)
			return &syms[i];
	return NULL;
}

/* a header value: printable ASCII, no structure characters */
static void
hval(char *dst, size_t sz, const char *src)
{
	size_t o = 0;

	for (; *src && o + 1 < sz; src++)
		dst[o++] = ((unsigned char)*src > 0x20 && (unsigned char)*src < 0x7f &&
		    strchr("\";()\\", *src) == NULL) ? *src : '?';
	dst[o] = '\0';
}

/* RFC 7208 9.1: Received-SPF: result (comment) key=value; ... */
static void
received_spf(const struct msg_ctx *x, const char *receiver, const struct spf_out *o,
    struct verdict *v)
{
	struct buf b = BUF_INIT;
	char ip[64], from[300], helo[300], rcv[300];
	const char *res = auth_res_name(o->res);

	char dom[256];

	hval(dom, sizeof(dom), o->domain);
	hval(ip, sizeof(ip), x->client_ip);
	hval(from, sizeof(from), x->sender[0] ? x->sender : "<>");
	hval(helo, sizeof(helo), x->helo[0] ? x->helo : "unknown");
	hval(rcv, sizeof(rcv), receiver);
	buf_printf(&b, "Received-SPF: %s (%s:\r\n\t", res, rcv);
	switch (o->res) {
	case AR_PASS:
		buf_printf(&b, "domain of %s designates %s as permitted sender", dom, ip);
		break;
	case AR_FAIL:
		buf_printf(&b, "domain of %s does not designate %s as permitted sender", dom, ip);
		break;
	case AR_SOFTFAIL:
		buf_printf(&b, "domain of transitioning %s does not designate %s as permitted sender",
		    dom, ip);
		break;
	case AR_NEUTRAL:
		buf_printf(&b, "%s is neither permitted nor denied by domain of %s", ip, dom);
		break;
	case AR_NONE:
		buf_printf(&b, "domain of %s does not provide an SPF record", dom);
		break;
	case AR_TEMPERROR:
		buf_printf(&b, "temporary error evaluating %s", dom);
		break;
	default:
		buf_printf(&b, "permanent error in the SPF record of %s", dom);
		break;
	}
	buf_printf(&b, ")\r\n\tclient-ip=%s; envelope-from=\"%s\"; helo=%s;\r\n\treceiver=%s;"
	    " identity=%s;", ip, from, helo, rcv, o->helo ? "helo" : "mailfrom");
	if ((o->res == AR_PERMERROR || o->res == AR_TEMPERROR) && o->why[0]) {
		char why[160];
		size_t k = 0;
		for (const char *p = o->why; *p && k + 1 < sizeof(why); p++)
			why[k++] = (*p == '"' || *p == '\\') ? '\'' : *p;
		why[k] = '\0';
		buf_printf(&b, "\r\n\tproblem=\"%s\";", why);
	}
	verdict_add_header(v, b.data);
	buf_free(&b);
}

static void
spf_check(void *state, struct msg_ctx *x, struct verdict *v)
{
	struct spf_state *st = state;
	const struct moat_conf *c = st->conf;
	struct spf_out mf, he;
	struct spf_in in;
	const struct sym_def *s;
	char reason[200];

	if (x->trusted || x->res == NULL || x->client_ip == NULL || x->client_ip[0] == '\0')
		return;
	memset(&in, 0, sizeof(in));
	in.ip = x->client_ip;
	in.helo = x->helo;
	in.sender = x->sender;
	in.receiver = c->hostname;
	in.budget_ms = (c->resolver_timeout > 0 ? c->resolver_timeout : 5) * 4000;
	spf_eval(x->res, &in, &mf, &he);

	x->auth.spf = mf.res;
	x->auth.spf_helo = mf.helo;
	moat_strlcpy(x->auth.spf_domain, mf.domain, sizeof(x->auth.spf_domain));
	if ((s = sym_for(mf.res)) != NULL) {
		snprintf(reason, sizeof(reason), "%s%s: %s", mf.helo ? "helo " : "", mf.domain,
		    mf.why[0] ? mf.why : auth_res_name(mf.res));
		verdict_add(v, s->mfrom, filter_score(c, s->mfrom, s->dmfrom), reason);
	}
	/* the HELO identity on its own when the sender is not <> */
	if (x->sender[0] && he.res != AR_UNSET && (s = sym_for(he.res)) != NULL &&
	    !(he.res == AR_NONE && he.why[0] && strncmp(he.why, "HELO name", 9) == 0)) {
		snprintf(reason, sizeof(reason), "%s: %s", he.domain,
		    he.why[0] ? he.why : auth_res_name(he.res));
		verdict_add(v, s->helo, filter_score(c, s->helo, s->dhelo), reason);
	}
	received_spf(x, c->hostname ? c->hostname : "localhost", &mf, v);
	{
		char d[300], w[400];
		log_esc(mf.domain, strlen(mf.domain), d, sizeof(d));
		log_esc(mf.why, strlen(mf.why), w, sizeof(w));
		log_info("spf: qid=%s ip=%s identity=%s domain=%s result=%s lookups=%u voids=%u why=\"%s\"",
		    x->qid, x->client_ip, mf.helo ? "helo" : "mailfrom", d,
		    auth_res_name(mf.res), mf.lookups, mf.voids, w);
	}
}

const struct filter filter_spf = { "spf", FLT_MAIL, spf_init, spf_check, spf_fini };
