/*
 * engine.c - the data stage of the filter engine (see engine.h).
 * Runs in: the worker; engine_run() in pool threads.  Input: the message
 * as received (untrusted); every filter bounds its own work (MIME limits,
 * PCRE2 match limits, libclamav scan limits).
 */
#include "config.h"
#include "engine.h"
#include "attach.h"
#include "av.h"
#include "bayes.h"
#include "buf.h"
#include "conf.h"
#include "lists.h"
#include "log.h"
#include "mime.h"
#include "resolver.h"
#include "rules.h"
#include "filter.h"
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


void
verdict_add(struct verdict *v, const char *name, double score, const char *reason)
{
	struct symbol *s;

	if (v->nsym >= 256)
		return;
	v->sym = xreallocarray(v->sym, v->nsym + 1, sizeof(*v->sym));
	s = &v->sym[v->nsym++];
	moat_strlcpy(s->name, name, sizeof(s->name));
	moat_strlcpy(s->reason, reason ? reason : "", sizeof(s->reason));
	s->score = score;
	v->score += score;
}

void
verdict_force(struct verdict *v, enum verdict_action a, const char *why)
{
	/* the strongest forced action wins: reject > tempfail > quarantine */
	static const int rank[] = { [VA_ACCEPT] = 0, [VA_TAG] = 1, [VA_QUARANTINE] = 2,
	    [VA_TEMPFAIL] = 3, [VA_REJECT] = 4 };
	if (v->forced && rank[v->force] >= rank[a])
		return;
	v->forced = true;
	v->force = a;
	moat_strlcpy(v->force_why, why, sizeof(v->force_why));
}

void
verdict_add_header(struct verdict *v, const char *field)
{
	size_t l = strlen(field);

	if (v->hdrslen + l > 64 * 1024)
		return;
	v->hdrs = xrealloc(v->hdrs, v->hdrslen + l + 3);
	memcpy(v->hdrs + v->hdrslen, field, l);
	/* header-safe: a field never carries a bare CR or LF of its own except
	 * folding, which callers write as CRLF + tab */
	v->hdrslen += l;
	memcpy(v->hdrs + v->hdrslen, "\r\n", 3);
	v->hdrslen += 2;
}

double
filter_score(const struct moat_conf *c, const char *symbol, double def)
{
	for (size_t i = c->nscores; i-- > 0;)
		if (!strcmp(c->scores[i].symbol, symbol))
			return c->scores[i].score;
	return def;
}

const char *
auth_res_name(enum auth_res r)
{
	static const char *n[] = { "unset", "pass", "fail", "softfail", "neutral", "none",
	    "temperror", "permerror", "policy" };
	return r <= AR_POLICY ? n[r] : "?";
}


/* the network and authentication filters, in the order they run: DMARC
 * needs the SPF and DKIM results in msg_ctx.auth */
extern const struct filter filter_helo, filter_dnsbl, filter_geoip, filter_spf, filter_dkim,
    filter_dmarc;
static const struct filter *const table[] = {
	&filter_helo, &filter_dnsbl, &filter_geoip, &filter_spf, &filter_dkim, &filter_dmarc,
};
#define NFILTERS (sizeof(table) / sizeof(table[0]))

struct engine {
	const struct moat_conf *conf;
	struct rules *rules;
	struct av *av;
	struct av_conf avc;
	struct bayes *bayes;
	bool    attach;
	struct resolver *res;
	void   *state[NFILTERS];        /* NULL: that filter is not configured */
	bool    early[NFILTERS];        /* filter-stage NAME rcpt */
	pthread_mutex_t bayes_mu;       /* guards opening bayes for the first learn */
	/* auto-learn: confident verdicts wait here and are learned in one
	 * write transaction by engine_autolearn_flush() (a timer, a pool job) */
	pthread_mutex_t al_mu;
	struct al_item { char *msg; size_t len; bool spam; } *al;
	size_t  nal, albytes;
};

struct engine *
engine_new(const struct moat_conf *c, char **err)
{
	struct engine *e = xcalloc(1, sizeof(*e));
	char msg[1024];

	*err = NULL;
	e->conf = c;
	e->attach = c->attachment_policy;
	if (c->nrules_paths) {
		struct rules_report rep;
		char *rerr = NULL;
		memset(&rep, 0, sizeof(rep));
		e->rules = rules_load((const char *const *)c->rules_paths, c->nrules_paths, &rep, &rerr);
		if (e->rules == NULL) {
			snprintf(msg, sizeof(msg), "rules: %s", rerr ? rerr : "cannot load");
			free(rerr);
			rules_report_free(&rep);
			engine_free(e);
			*err = xstrdup(msg);
			return NULL;
		}
		log_info("engine: rules loaded=%u files=%u hard-errors=%u (moat rules check lists them)",
		    rep.loaded, rep.files, rep.hard);
		rules_report_free(&rep);
	}
	if (c->av_database || c->av_clamd) {
		struct av_conf d = AV_CONF_DEFAULT;
		char *aerr = NULL;
		e->avc = d;
		if (c->av_database) {
			e->avc.backend = AV_BACKEND_LIBCLAMAV;
			e->avc.database = c->av_database;
		} else {
			e->avc.backend = AV_BACKEND_CLAMD;
			e->avc.clamd = c->av_clamd;
		}
		e->avc.action = c->av_quarantine ? AV_ACTION_QUARANTINE : AV_ACTION_REJECT;
		e->avc.on_error = c->av_accept_on_error ? AV_ONERROR_ACCEPT : AV_ONERROR_TEMPFAIL;
		e->av = av_open(&e->avc, &aerr);
		if (e->av == NULL) {
			snprintf(msg, sizeof(msg), "antivirus: %s", aerr ? aerr : "cannot start");
			free(aerr);
			engine_free(e);
			*err = xstrdup(msg);
			return NULL;
		}
		free(aerr);
	}
	if (c->bayes) {
		char path[4096], *berr = NULL;
		conf_path(c, "bayes.lmdb", path, sizeof(path));
		if (access(path, F_OK) == 0) {
			/* read-write: IMAP Junk moves learn through the same
			 * environment (LMDB allows one open per process) */
			e->bayes = bayes_open(c->state_dir, false, &berr);
			if (e->bayes == NULL)
				log_warnx("engine: bayes disabled: %s", berr ? berr : "cannot open");
			free(berr);
		}
	}
	pthread_mutex_init(&e->bayes_mu, NULL);
	pthread_mutex_init(&e->al_mu, NULL);
	for (size_t i = 0; i < NFILTERS; i++)
		for (size_t k = 0; k < c->nearly_filters; k++)
			if (!strcmp(c->early_filters[k], table[i]->name))
				e->early[i] = table[i]->stage <= FLT_RCPT;
	for (size_t i = 0; i < NFILTERS; i++) {
		char *ferr = NULL;
		if (table[i]->init == NULL)
			continue;
		if (table[i]->init(c, &e->state[i], &ferr) < 0) {
			snprintf(msg, sizeof(msg), "%s: %s", table[i]->name, ferr ? ferr : "cannot start");
			free(ferr);
			engine_free(e);
			*err = xstrdup(msg);
			return NULL;
		}
		free(ferr);
		if (e->state[i] && e->res == NULL) {
			char *rerr = NULL;
			e->res = resolver_new(c, &rerr);
			if (e->res == NULL) {
				snprintf(msg, sizeof(msg), "%s", rerr ? rerr : "resolver: cannot start");
				free(rerr);
				engine_free(e);
				*err = xstrdup(msg);
				return NULL;
			}
		}
	}
	return e;
}

void
engine_free(struct engine *e)
{
	if (e == NULL)
		return;
	for (size_t i = 0; i < NFILTERS; i++)
		if (e->state[i] && table[i]->fini)
			table[i]->fini(e->state[i]);
	for (size_t i = 0; i < e->nal; i++)
		free(e->al[i].msg);
	free(e->al);
	resolver_free(e->res);
	rules_free(&e->rules);
	av_close(&e->av);
	bayes_close(&e->bayes);
	free(e);
}

/* for the metrics (gateway/http.c): NULL if none */
struct resolver *
engine_resolver(const struct engine *e)
{
	return e ? e->res : NULL;
}

struct av *
engine_av(const struct engine *e)
{
	return e ? e->av : NULL;
}

bool
engine_active(const struct engine *e)
{
	if (e == NULL)
		return false;
	for (size_t i = 0; i < NFILTERS; i++)
		if (e->state[i])
			return true;
	return e->rules || e->av || e->bayes || e->attach || e->conf->lists_dir;
}

/* the domain of the first address in a From header value */
static bool
from_domain(const char *from, char *out, size_t outsz)
{
	const char *lt = strchr(from, '<'), *at, *end;
	const char *p = lt ? lt + 1 : from;

	at = strchr(p, '@');
	if (at == NULL)
		return false;
	end = at + 1;
	while (*end && *end != '>' && *end != ' ' && *end != ',' && *end != ';' && *end != ')')
		end++;
	if (end == at + 1 || (size_t)(end - at - 1) >= outsz)
		return false;
	memcpy(out, at + 1, (size_t)(end - at - 1));
	out[end - at - 1] = '\0';
	return true;
}

/* RFC 8601: one Authentication-Results field for what SPF, DKIM and DMARC
 * found (written first, above the X-Spam-* fields) */
static void
auth_results(const struct moat_conf *c, const struct msg_ctx *x, struct verdict *v)
{
	const struct auth_info *a = &x->auth;
	struct buf b = BUF_INIT;
	size_t n = 0;

	if (a->spf == AR_UNSET && a->ndkim == 0 && !a->dkim_none && a->dmarc == AR_UNSET)
		return;
	buf_printf(&b, "Authentication-Results: %s", c->authserv_id ? c->authserv_id : c->hostname);
	if (a->spf != AR_UNSET) {
		buf_printf(&b, ";\r\n\tspf=%s %s=%s", auth_res_name(a->spf),
		    a->spf_helo ? "smtp.helo" : "smtp.mailfrom", a->spf_domain[0] ? a->spf_domain : "unknown");
		n++;
	}
	for (size_t i = 0; i < a->ndkim && i < AUTH_MAX_DKIM; i++, n++) {
		buf_printf(&b, ";\r\n\tdkim=%s", auth_res_name(a->dkim[i].res));
		if (a->dkim[i].reason[0])
			buf_printf(&b, " (%s)", a->dkim[i].reason);
		buf_printf(&b, " header.d=%s", a->dkim[i].domain[0] ? a->dkim[i].domain : "unknown");
		if (a->dkim[i].selector[0])
			buf_printf(&b, " header.s=%s", a->dkim[i].selector);
		if (a->dkim[i].b[0])
			buf_printf(&b, " header.b=\"%s\"", a->dkim[i].b);
	}
	if (a->dkim_none) {
		buf_adds(&b, ";\r\n\tdkim=none");
		n++;
	}
	if (a->dmarc != AR_UNSET) {
		buf_printf(&b, ";\r\n\tdmarc=%s", auth_res_name(a->dmarc));
		if (a->dmarc_policy[0])
			buf_printf(&b, " (p=%s)", a->dmarc_policy);
		buf_printf(&b, " header.from=%s", a->dmarc_domain[0] ? a->dmarc_domain : "unknown");
		n++;
	}
	if (n)
		verdict_add_header(v, b.data);
	buf_free(&b);
}

#define AL_MAX_MSGS   1000
#define AL_MAX_BYTES  (32u << 20)
#define AL_MAX_MSG    (1u << 20)

/*
 * Learn from a confident verdict, as SpamAssassin's auto-learn: the score
 * without Bayes' own symbol (no self-reinforcement) at or above the spam
 * threshold of a message we tag, quarantine or reject, or at or below the
 * ham threshold of one we accept.  Not for forced verdicts (a virus or a
 * DMARC policy says nothing about the words).  Queued (bounded), learned
 * in batches off the message path.
 */
static void
autolearn_maybe(struct engine *e, const char *msg, size_t len, const struct verdict *v)
{
	const struct moat_conf *c = e->conf;
	double base = v->score;
	bool spam;

	if (v->forced || len > AL_MAX_MSG)
		return;
	for (size_t i = 0; i < v->nsym; i++)
		if (!strncmp(v->sym[i].name, "BAYES_", 6))
			base -= v->sym[i].score;
	if (base >= c->bayes_autolearn_spam && v->action != VA_ACCEPT)
		spam = true;
	else if (base <= c->bayes_autolearn_ham && v->action == VA_ACCEPT)
		spam = false;
	else
		return;
	pthread_mutex_lock(&e->al_mu);
	if (e->nal < AL_MAX_MSGS && e->albytes + len <= AL_MAX_BYTES) {
		e->al = xreallocarray(e->al, e->nal + 1, sizeof(*e->al));
		e->al[e->nal].msg = xmalloc(len + 1);
		memcpy(e->al[e->nal].msg, msg, len);
		e->al[e->nal].msg[len] = '\0';
		e->al[e->nal].len = len;
		e->al[e->nal].spam = spam;
		e->nal++;
		e->albytes += len;
	}
	pthread_mutex_unlock(&e->al_mu);
}

bool
engine_autolearn_pending(struct engine *e)
{
	bool p;
	if (e == NULL)
		return false;
	pthread_mutex_lock(&e->al_mu);
	p = e->nal > 0;
	pthread_mutex_unlock(&e->al_mu);
	return p;
}

void
engine_autolearn_flush(struct engine *e)
{
	struct al_item *v;
	size_t n, spam = 0, ham = 0, already = 0, failed = 0;
	struct bayes *b;
	char *err = NULL;

	pthread_mutex_lock(&e->al_mu);
	v = e->al;
	n = e->nal;
	e->al = NULL;
	e->nal = e->albytes = 0;
	pthread_mutex_unlock(&e->al_mu);
	if (n == 0)
		return;
	pthread_mutex_lock(&e->bayes_mu);
	if ((b = __atomic_load_n(&e->bayes, __ATOMIC_ACQUIRE)) == NULL) {
		b = bayes_open(e->conf->state_dir, false, &err);
		if (b == NULL)
			log_warnx("engine: bayes: %s", err ? err : "cannot open");
		free(err);
		err = NULL;
		__atomic_store_n(&e->bayes, b, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&e->bayes_mu);
	if (b && bayes_batch_begin(b) == 0) {
		for (size_t i = 0; i < n; i++) {
			struct mime_limits lim = MIME_LIMITS_DEFAULT;
			struct mime_msg *m = mime_parse(v[i].msg, v[i].len, &lim, &err);
			uint8_t d[BAYES_DIGEST_LEN];
			free(err);
			err = NULL;
			if (m == NULL) {
				failed++;
				continue;
			}
			bayes_digest(v[i].msg, v[i].len, d);
			switch (bayes_learn(b, m, v[i].spam, d)) {
			case BAYES_OK:
				if (v[i].spam)
					spam++;
				else
					ham++;
				break;
			case BAYES_ALREADY:
				already++;
				break;
			default:
				failed++;
				break;
			}
			mime_free(&m);
		}
		if (bayes_batch_end(b, true) < 0) {
			failed += spam + ham;
			spam = ham = 0;
		}
	} else
		failed = n;
	log_info("bayes event=autolearn spam=%zu ham=%zu already=%zu failed=%zu", spam, ham, already,
	    failed);
	for (size_t i = 0; i < n; i++)
		free(v[i].msg);
	free(v);
}

/* what the filters of the first RCPT found (filter-stage NAME rcpt) */
struct engine_early {
	struct verdict v;
	struct auth_info auth;
	char    client_name[256];
	bool    ran[NFILTERS];
};

static void
ctx_from_in(struct engine *e, const struct engine_in *in, struct msg_ctx *ctx)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->qid = in && in->qid ? in->qid : "-";
	ctx->client = in ? in->client : NULL;
	ctx->client_ip = in && in->client_ip ? in->client_ip : "";
	ctx->helo = in && in->helo ? in->helo : "";
	ctx->sender = in && in->sender ? in->sender : "";
	ctx->rcpts = in ? in->rcpts : NULL;
	ctx->nrcpts = in ? in->nrcpts : 0;
	ctx->auth_user = in ? in->auth_user : NULL;
	ctx->tls = in && in->tls;
	ctx->lists = in ? in->lists : NULL;
	ctx->res = e->res;
	ctx->trusted = ctx->auth_user != NULL;
}

bool
engine_has_early(const struct engine *e)
{
	for (size_t i = 0; e && i < NFILTERS; i++)
		if (e->early[i] && e->state[i])
			return true;
	return false;
}

struct engine_early *
engine_early_run(struct engine *e, const struct engine_in *in)
{
	struct engine_early *r = xcalloc(1, sizeof(*r));
	const struct moat_conf *c = e->conf;
	struct msg_ctx ctx;
	uint64_t t0 = now_ms();

	ctx_from_in(e, in, &ctx);
	if (!ctx.trusted && !(in && in->allowlisted))
		for (size_t i = 0; i < NFILTERS; i++)
			if (e->early[i] && e->state[i]) {
				table[i]->check(e->state[i], &ctx, &r->v);
				r->ran[i] = true;
			}
	r->auth = ctx.auth;
	if (ctx.client_name)
		moat_strlcpy(r->client_name, ctx.client_name, sizeof(r->client_name));
	double th_rej = in && in->th_set ? in->th_reject : c->action_reject;
	if (r->v.forced && r->v.force == VA_REJECT)
		r->v.action = VA_REJECT;
	else if (th_rej > 0 && r->v.score >= th_rej)
		r->v.action = VA_REJECT;
	else
		r->v.action = VA_ACCEPT;
	r->v.elapsed_ms = (double)(now_ms() - t0);
	return r;
}

const struct verdict *
engine_early_verdict(const struct engine_early *r)
{
	return &r->v;
}

void
engine_early_free(struct engine_early *r)
{
	if (r == NULL)
		return;
	verdict_clear(&r->v);
	free(r);
}

void
engine_run(struct engine *e, const char *msg, size_t len, const struct engine_in *in,
    struct verdict *v)
{
	const struct moat_conf *c = e->conf;
	struct mime_limits lim = MIME_LIMITS_DEFAULT;
	struct mime_msg *m;
	char *err = NULL;
	char why[200];
	uint64_t t0 = now_ms();

	memset(v, 0, sizeof(*v));
	for (size_t i = 0; in && i < in->nearly; i++)
		verdict_add(v, in->early[i].name, in->early[i].score, in->early[i].reason);
	const struct engine_early *pre = in ? in->pre : NULL;
	if (pre) {
		/* the first RCPT's filters count with the rest */
		for (size_t i = 0; i < pre->v.nsym; i++)
			verdict_add(v, pre->v.sym[i].name, pre->v.sym[i].score, pre->v.sym[i].reason);
		if (pre->v.forced)
			verdict_force(v, pre->v.force, pre->v.force_why);
		if (pre->v.hdrslen) {
			v->hdrs = xmalloc(pre->v.hdrslen + 1);
			memcpy(v->hdrs, pre->v.hdrs, pre->v.hdrslen);
			v->hdrslen = pre->v.hdrslen;
		}
	}
	if (e->av) {
		char vir[128];
		char *aerr = NULL;
		av_reload_check(e->av, false);
		switch (av_scan(e->av, msg, len, vir, sizeof(vir), &aerr)) {
		case AV_INFECTED:
			snprintf(why, sizeof(why), "virus %s", vir);
			verdict_add(v, "AV_VIRUS", 0, vir);
			verdict_force(v, e->avc.action == AV_ACTION_QUARANTINE ? VA_QUARANTINE : VA_REJECT, why);
			break;
		case AV_ERROR:
			verdict_add(v, "AV_ERROR", 0, aerr ? aerr : "scan failed");
			if (e->avc.on_error == AV_ONERROR_TEMPFAIL)
				verdict_force(v, VA_TEMPFAIL, "virus scanner unavailable");
			break;
		default:
			break;
		}
		free(aerr);
	}
	m = mime_parse(msg, len, &lim, &err);
	bool allow = in && in->allowlisted;
	char dom[256];
	bool have_from = false;
	if (m) {
		const char *f = mime_header_get(m, "From");
		if (f && from_domain(f, dom, sizeof(dom))) {
			have_from = true;
			for (char *q = dom; *q; q++)
				if (*q >= 'A' && *q <= 'Z')
					*q = (char)(*q - 'A' + 'a');
		}
	}
	if (m && in && in->lists) {
		if (have_from) {
			if (lists_match(in->lists, LK_BLOCK, LT_FROM, dom)) {
				snprintf(why, sizeof(why), "From domain %s is blocked", dom);
				verdict_add(v, "FROM_BLOCKED", 0, why);
				verdict_force(v, VA_REJECT, why);
			} else if (lists_match(in->lists, LK_ALLOW, LT_FROM, dom))
				allow = true;
		}
	}
	if (allow && !v->forced) {
		/* allow-listed: no spam scoring; viruses were still checked above */
		verdict_add(v, "ALLOWLISTED", 0, "allow list");
		verdict_force(v, VA_ACCEPT, "allow list");
		mime_free(&m);
	} else if (m == NULL) {
		verdict_add(v, "MIME_UNPARSEABLE", 1.0, err);
		free(err);
	} else {
		/* the network and authentication filters */
		struct msg_ctx ctx;
		ctx_from_in(e, in, &ctx);
		ctx.msg = msg;
		ctx.len = len;
		ctx.mime = m;
		ctx.from_domain = have_from ? dom : NULL;
		if (pre) {
			ctx.auth = pre->auth;
			ctx.client_name = pre->client_name[0] ? pre->client_name : NULL;
		}
		/* authenticated submissions are not checked against the sender's
		 * DNS: the client is our user, not the sending domain's server */
		if (!ctx.trusted)
			for (size_t i = 0; i < NFILTERS; i++) {
				if (!e->state[i])
					continue;
				ctx.client_done = false;
				if (pre && pre->ran[i]) {
					/* done at RCPT; the DNS lists still have the
					 * message's URLs to look up */
					if (table[i] != &filter_dnsbl)
						continue;
					ctx.client_done = true;
				}
				table[i]->check(e->state[i], &ctx, v);
			}
		auth_results(c, &ctx, v);
		if (e->attach) {
			struct attach_result ar;
			if (attach_check(NULL, m, &ar) != ATTACH_ACCEPT && ar.nfindings) {
				const struct attach_finding *f = &ar.f[0];
				snprintf(why, sizeof(why), "attachment %s%s%s not allowed (%s)", f->filename,
				    f->member[0] ? " / " : "", f->member, f->detail);
				verdict_add(v, "ATTACH_BLOCKED", 0, why);
				verdict_force(v, ar.action == ATTACH_REJECT ? VA_REJECT : VA_QUARANTINE, why);
			}
		}
		if (e->rules) {
			struct rules_hits h;
			memset(&h, 0, sizeof(h));
			if (rules_eval(e->rules, m, msg, len, &h) == 0)
				for (size_t i = 0; i < h.n; i++)
					verdict_add(v, h.v[i].name, h.v[i].score, h.v[i].desc);
			rules_hits_free(&h);
		}
		struct bayes *bay = __atomic_load_n(&e->bayes, __ATOMIC_ACQUIRE);
		if (bay) {
			struct bayes_result br;
			memset(&br, 0, sizeof(br));
			if (bayes_classify(bay, m, &br) == 0 && br.ready) {
				char r[64];
				snprintf(r, sizeof(r), "spam probability %.3f, log-odds %.1f", br.prob, br.lodds);
				verdict_add(v, br.symbol, br.score, r);
			}
		}
		mime_free(&m);
	}
	/* thresholds; a forced action overrides them */
	double th_tag = c->action_tag, th_q = c->action_quarantine, th_rej = c->action_reject;
	if (in && in->th_set) {
		th_tag = in->th_tag;
		th_q = in->th_quarantine;
		th_rej = in->th_reject;
	}
	v->required = th_tag > 0 ? th_tag : th_rej;
	if (v->forced)
		v->action = v->force;
	else if (th_rej > 0 && v->score >= th_rej)
		v->action = VA_REJECT;
	else if (th_q > 0 && v->score >= th_q)
		v->action = VA_QUARANTINE;
	else if (th_tag > 0 && v->score >= th_tag)
		v->action = VA_TAG;
	else
		v->action = VA_ACCEPT;
	if (c->bayes && c->bayes_autolearn && !allow && in && in->auth_user == NULL)
		autolearn_maybe(e, msg, len, v);
	v->elapsed_ms = (double)(now_ms() - t0);
}

int
engine_learn(struct engine *e, const char *msg, size_t len, bool spam)
{
	struct mime_limits lim = MIME_LIMITS_DEFAULT;
	struct mime_msg *m;
	uint8_t d[BAYES_DIGEST_LEN];
	char *err = NULL;
	int rc;

	if (e == NULL || !e->conf->bayes)
		return BAYES_ERR;
	pthread_mutex_lock(&e->bayes_mu);
	if (e->bayes == NULL) {
		/* the first learn creates the database */
		struct bayes *nb = bayes_open(e->conf->state_dir, false, &err);
		if (nb == NULL)
			log_warnx("engine: bayes: %s", err ? err : "cannot open");
		__atomic_store_n(&e->bayes, nb, __ATOMIC_RELEASE);
		free(err);
		err = NULL;
	}
	pthread_mutex_unlock(&e->bayes_mu);
	if (e->bayes == NULL)
		return BAYES_ERR;
	if ((m = mime_parse(msg, len, &lim, &err)) == NULL) {
		free(err);
		return BAYES_ERR;
	}
	bayes_digest(msg, len, d);
	rc = bayes_learn(e->bayes, m, spam, d);
	mime_free(&m);
	return rc;
}

const char *
verdict_action_name(enum verdict_action a)
{
	static const char *n[] = { "accept", "tag", "quarantine", "reject", "tempfail" };
	return a <= VA_TEMPFAIL ? n[a] : "?";
}

void
verdict_symbols(const struct verdict *v, struct buf *out)
{
	for (size_t i = 0; i < v->nsym && out->len < 3000; i++)
		buf_printf(out, "%s%s(%.2f)", i ? "," : "", v->sym[i].name, v->sym[i].score);
}

void
verdict_headers(const struct verdict *v, const struct moat_conf *c, struct buf *out)
{
	bool spam = v->action == VA_TAG || v->action == VA_QUARANTINE || v->action == VA_REJECT;
	double req = v->required > 0 ? v->required : c->action_tag > 0 ? c->action_tag : c->action_reject;
	struct buf tests = BUF_INIT;

	if (v->hdrslen)
		buf_add(out, v->hdrs, v->hdrslen);
	for (size_t i = 0; i < v->nsym && tests.len < 900; i++)
		buf_printf(&tests, "%s%s", i ? "," : "", v->sym[i].name);
	buf_printf(out, "X-Spam-Flag: %s\r\n", spam ? "YES" : "NO");
	buf_printf(out, "X-Spam-Score: %.2f\r\n", v->score);
	buf_printf(out, "X-Spam-Status: %s, score=%.2f required=%.2f tests=%s\r\n", spam ? "Yes" : "No",
	    v->score, req, tests.len ? tests.data : "none");
	if (spam && v->nsym) {
		buf_adds(out, "X-Spam-Report:");
		for (size_t i = 0; i < v->nsym && i < 50; i++) {
			char r[160];
			/* header-safe: no CR/LF from rule descriptions */
			moat_strlcpy(r, v->sym[i].reason, sizeof(r));
			for (char *p = r; *p; p++)
				if (*p == '\r' || *p == '\n' || (unsigned char)*p < 0x20)
					*p = ' ';
			buf_printf(out, "\r\n\t* %5.2f %s %s", v->sym[i].score, v->sym[i].name, r);
		}
		buf_adds(out, "\r\n");
	}
	buf_free(&tests);
}

void
verdict_clear(struct verdict *v)
{
	free(v->sym);
	free(v->hdrs);
	memset(v, 0, sizeof(*v));
}
