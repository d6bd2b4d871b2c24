/*
 * resolver.c - DNS for the filters through libunbound (see resolver.h).
 *
 * One ub_ctx per resolver, in threaded async mode: pool threads submit
 * queries with ub_resolve_async() and wait on a condition variable with a
 * deadline; one pump thread runs ub_process() whenever ub_fd() is readable
 * and the callbacks wake the waiters.  resolver_query_many() submits a
 * whole batch at once and waits with one deadline for all of it.  A query
 * past its deadline is cancelled (ub_cancel); if the answer raced the
 * cancel, the waiter takes the answer and frees it.  At most DNS_MAX_RR
 * records of an answer are kept.  libunbound caches answers (TTL-bounded) for
 * every thread.  Runs in: the worker (pool threads call resolver_query).
 */
#include "config.h"
#include "resolver.h"
#include "conf.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <unbound.h>

struct resolver {
	struct ub_ctx *ctx;
	pthread_t pump;
	int     stop[2];                /* pipe: wakes the pump to exit */
	long long timeout_ms;
	atomic_ullong queries, failures, timeouts;
};


static void *
pump(void *arg)
{
	struct resolver *r = arg;
	struct pollfd p[2] = { { ub_fd(r->ctx), POLLIN, 0 }, { r->stop[0], POLLIN, 0 } };

	for (;;) {
		if (poll(p, 2, 1000) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (p[0].revents & POLLIN)
			ub_process(r->ctx);
	}
	return NULL;
}

struct resolver *
resolver_new(const struct moat_conf *c, char **err)
{
	struct resolver *r = xcalloc(1, sizeof(*r));
	int e;

	*err = NULL;
	r->timeout_ms = c->resolver_timeout > 0 ? c->resolver_timeout * 1000 : 5000;
	r->ctx = ub_ctx_create();
	if (r->ctx == NULL) {
		*err = xstrdup("resolver: cannot create the libunbound context");
		free(r);
		return NULL;
	}
	/* tests forward to 127.0.0.1; unbound refuses localhost by default */
	ub_ctx_set_option(r->ctx, "do-not-query-localhost:", "no");
	if (c->resolver) {
		char fwd[300];
		const char *colon = strrchr(c->resolver, ':');
		/* HOST:PORT (IPv6 as [::1]:53) -> unbound's "HOST@PORT" */
		if (c->resolver[0] == '[') {
			const char *rb = strchr(c->resolver, ']');
			if (rb && rb[1] == ':')
				snprintf(fwd, sizeof(fwd), "%.*s@%s", (int)(rb - c->resolver - 1),
				    c->resolver + 1, rb + 2);
			else
				snprintf(fwd, sizeof(fwd), "%.*s", rb ? (int)(rb - c->resolver - 1) : 0,
				    c->resolver + 1);
		} else if (colon && strchr(c->resolver, ':') == colon)
			snprintf(fwd, sizeof(fwd), "%.*s@%s", (int)(colon - c->resolver), c->resolver,
			    colon + 1);
		else
			snprintf(fwd, sizeof(fwd), "%s", c->resolver);
		e = ub_ctx_set_fwd(r->ctx, fwd);
		/* forwarding: the admin's resolver (or a test's) answers for
		 * everything, including the names unbound would otherwise answer
		 * itself (RFC 6761 test./invalid., loopback and private reverse
		 * zones, documentation networks) */
		static const char *const nodefault[] = {
			"localhost.", "test.", "invalid.", "onion.", "home.arpa.", "resolver.arpa.",
			"service.arpa.", "127.in-addr.arpa.", "0.in-addr.arpa.", "254.169.in-addr.arpa.",
			"2.0.192.in-addr.arpa.", "100.51.198.in-addr.arpa.", "113.0.203.in-addr.arpa.",
			"255.255.255.255.in-addr.arpa.",
			"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
			"0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
			"d.f.ip6.arpa.", "8.e.f.ip6.arpa.", "9.e.f.ip6.arpa.", "a.e.f.ip6.arpa.",
			"b.e.f.ip6.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa.",
		};
		for (size_t i = 0; e == 0 && i < sizeof(nodefault) / sizeof(nodefault[0]); i++) {
			char z[128];
			snprintf(z, sizeof(z), "%s transparent", nodefault[i]);
			e = ub_ctx_set_option(r->ctx, "local-zone:", z);
		}
		if (e == 0)
			e = ub_ctx_set_option(r->ctx, "unblock-lan-zones:", "yes");
		if (e == 0)
			e = ub_ctx_set_option(r->ctx, "insecure-lan-zones:", "yes");
	} else {
		/* no usable resolv.conf: libunbound resolves from the root
		 * itself, which still works (and tests always set resolver) */
		if (ub_ctx_resolvconf(r->ctx, NULL) != 0)
			log_warnx("resolver: cannot read /etc/resolv.conf, resolving from the root");
		else
			ub_ctx_hosts(r->ctx, NULL);
		e = 0;
	}
	if (e == 0)
		e = ub_ctx_async(r->ctx, 1);
	if (getenv("MOAT_DEBUG_UNBOUND"))
		ub_ctx_debuglevel(r->ctx, atoi(getenv("MOAT_DEBUG_UNBOUND")));
	if (e != 0) {
		char m[300];
		snprintf(m, sizeof(m), "resolver: %s", ub_strerror(e));
		*err = xstrdup(m);
		ub_ctx_delete(r->ctx);
		free(r);
		return NULL;
	}
	if (pipe(r->stop) < 0 || pthread_create(&r->pump, NULL, pump, r) != 0) {
		*err = xstrdup("resolver: cannot start the resolver thread");
		ub_ctx_delete(r->ctx);
		free(r);
		return NULL;
	}
	return r;
}

void
resolver_free(struct resolver *r)
{
	if (r == NULL)
		return;
	(void)!write(r->stop[1], "x", 1);
	pthread_join(r->pump, NULL);
	close(r->stop[0]);
	close(r->stop[1]);
	ub_ctx_delete(r->ctx);
	free(r);
}

/* a wire-format name at p (no compression in rdata from libunbound for the
 * types we decode, except it may be compressed in the packet: libunbound
 * hands rdata uncompressed) into dotted text */
static bool
wire_name(const unsigned char *p, size_t len, char *out, size_t outsz)
{
	size_t i = 0, o = 0;

	while (i < len) {
		size_t l = p[i++];
		if (l == 0) {
			if (o == 0 && outsz > 0)
				out[o++] = '.';
			out[o > 1 && out[o - 1] == '.' ? o - 1 : o] = '\0';
			return true;
		}
		if (l > 63 || i + l > len || o + l + 2 > outsz)
			return false;
		for (size_t k = 0; k < l; k++) {
			unsigned char ch = p[i + k];
			out[o++] = (ch > 0x20 && ch < 0x7f) ? (char)ch : '?';
		}
		out[o++] = '.';
		i += l;
	}
	return false;
}

static char *
decode(int type, const unsigned char *p, size_t len)
{
	char b[1100];

	b[0] = '\0';
	switch (type) {
	case DNS_T_A:
		if (len != 4 || !inet_ntop(AF_INET, p, b, sizeof(b)))
			return NULL;
		break;
	case DNS_T_AAAA:
		if (len != 16 || !inet_ntop(AF_INET6, p, b, sizeof(b)))
			return NULL;
		break;
	case DNS_T_PTR: case DNS_T_CNAME: case DNS_T_NS:
		if (!wire_name(p, len, b, sizeof(b)))
			return NULL;
		break;
	case DNS_T_MX: {
		char n[1025];
		if (len < 3 || !wire_name(p + 2, len - 2, n, sizeof(n)))
			return NULL;
		snprintf(b, sizeof(b), "%u %s", (unsigned)(p[0] << 8 | p[1]), n);
		break;
	}
	case DNS_T_TXT: case DNS_T_SPF: {
		/* character-strings concatenated (RFC 7208 3.3) */
		char *t = xmalloc(len + 1);
		size_t i = 0, o = 0;
		while (i < len) {
			size_t l = p[i++];
			if (i + l > len) {
				free(t);
				return NULL;
			}
			memcpy(t + o, p + i, l);
			o += l;
			i += l;
		}
		t[o] = '\0';
		return t;
	}
	default:
		return xstrdup("");
	}
	return xstrdup(b);
}

/* one query of a batch; the batch's mutex guards done/err/res */
struct slot {
	struct batch *b;
	int     id;
	bool    submitted;
	bool    done;
	int     err;
	struct ub_result *res;
};

struct batch {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t  left;                   /* submitted queries without an answer */
};

static void
callback(void *arg, int err, struct ub_result *res)
{
	struct slot *q = arg;
	struct batch *b = q->b;

	pthread_mutex_lock(&b->mu);
	q->err = err;
	q->res = res;
	q->done = true;
	if (b->left > 0)
		b->left--;
	if (b->left == 0)
		pthread_cond_signal(&b->cv);
	pthread_mutex_unlock(&b->mu);
}

/* the libunbound result of one query into a dns_answer */
static void
fill(struct resolver *r, struct dns_answer *a, int type, int err, struct ub_result *res)
{
	if (err != 0 || res == NULL) {
		a->status = DNS_TEMPFAIL;
		snprintf(a->why, sizeof(a->why), "%s", err ? ub_strerror(err) : "no result");
		atomic_fetch_add(&r->failures, 1);
		return;
	}
	a->rcode = res->rcode;
	a->secure = res->secure != 0;
	a->ttl = res->ttl > 0 ? (unsigned)res->ttl : 0;
	if (res->nxdomain)
		a->status = DNS_NXDOMAIN;
	else if (res->rcode == 2) {             /* SERVFAIL */
		a->status = DNS_TEMPFAIL;
		snprintf(a->why, sizeof(a->why), "SERVFAIL");
		atomic_fetch_add(&r->failures, 1);
	} else if (res->rcode != 0) {
		a->status = DNS_PERMFAIL;
		snprintf(a->why, sizeof(a->why), "rcode %d", res->rcode);
	} else if (!res->havedata)
		a->status = DNS_NODATA;
	else {
		size_t n = 0;
		while (res->data[n] && n < DNS_MAX_RR)
			n++;
		a->data = xcalloc(n + 1, sizeof(*a->data));
		a->len = xcalloc(n + 1, sizeof(*a->len));
		a->text = xcalloc(n + 1, sizeof(*a->text));
		for (size_t i = 0; i < n; i++) {
			size_t l = res->len[i] > 0 ? (size_t)res->len[i] : 0;
			char *t = decode(type, (const unsigned char *)res->data[i], l);
			if (t == NULL)
				continue;       /* malformed rdata: skipped */
			a->data[a->n] = xmalloc(l + 1);
			memcpy(a->data[a->n], res->data[i], l);
			a->len[a->n] = l;
			a->text[a->n] = t;
			a->n++;
		}
		a->status = a->n ? DNS_OK : DNS_NODATA;
	}
}

enum dns_status
resolver_query(struct resolver *r, const char *name, int type, struct dns_answer *a)
{
	const char *names[1] = { name };
	int types[1] = { type };

	resolver_query_many(r, names, types, 1, a);
	return a->status;
}

/*
 * All queries are submitted at once and share one deadline (now +
 * resolver-timeout, or the caller's).  At the deadline every query still out is cancelled;
 * one whose answer is already being delivered (ub_cancel fails) is waited
 * for, since its callback still refers to our slot.
 */
size_t
resolver_query_many(struct resolver *r, const char *const *names, const int *types, size_t n,
    struct dns_answer *out)
{
	return resolver_query_many_by(r, names, types, n, out, now_ms() + (uint64_t)r->timeout_ms);
}

size_t
resolver_query_many_by(struct resolver *r, const char *const *names, const int *types, size_t n,
    struct dns_answer *out, uint64_t deadline_ms)
{
	struct batch b;
	struct slot *q;
	struct timespec dl;
	size_t ok = 0;
	uint64_t now = now_ms();
	long long budget = deadline_ms > now ? (long long)(deadline_ms - now) : 0;

	if (n == 0)
		return 0;
	if (budget <= 0) {
		for (size_t i = 0; i < n; i++) {
			memset(&out[i], 0, sizeof(out[i]));
			out[i].type = types[i];
			out[i].rcode = -1;
			out[i].status = DNS_TEMPFAIL;
			snprintf(out[i].why, sizeof(out[i].why), "no time left for the lookup");
		}
		atomic_fetch_add(&r->failures, n);
		return 0;
	}
	q = xcalloc(n, sizeof(*q));
	memset(&b, 0, sizeof(b));
	pthread_mutex_init(&b.mu, NULL);
	{
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&b.cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += budget / 1000;
	dl.tv_nsec += (budget % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	/* hold the lock while submitting: a fast callback cannot see left
	 * reach 0 before every query is counted */
	pthread_mutex_lock(&b.mu);
	for (size_t i = 0; i < n; i++) {
		struct dns_answer *a = &out[i];
		const char *name = names[i];
		int e;

		memset(a, 0, sizeof(*a));
		a->type = types[i];
		a->rcode = -1;
		q[i].b = &b;
		if (name == NULL || name[0] == '\0' || strlen(name) > 253) {
			a->status = DNS_PERMFAIL;
			snprintf(a->why, sizeof(a->why), "invalid name");
			continue;
		}
		atomic_fetch_add(&r->queries, 1);
		b.left++;
		q[i].submitted = true;
		e = ub_resolve_async(r->ctx, name, types[i], 1 /* IN */, &q[i], callback, &q[i].id);
		if (e != 0) {
			b.left--;
			q[i].submitted = false;
			a->status = DNS_TEMPFAIL;
			snprintf(a->why, sizeof(a->why), "%s", ub_strerror(e));
			atomic_fetch_add(&r->failures, 1);
		}
	}
	while (b.left > 0)
		if (pthread_cond_timedwait(&b.cv, &b.mu, &dl) == ETIMEDOUT)
			break;
	if (b.left > 0) {
		/* the deadline passed: cancel what is still out (not under
		 * our lock: the pump may be waiting for it in a callback) */
		bool *late = xcalloc(n, sizeof(*late));
		for (size_t i = 0; i < n; i++)
			late[i] = q[i].submitted && !q[i].done;
		pthread_mutex_unlock(&b.mu);
		for (size_t i = 0; i < n; i++) {
			if (!late[i])
				continue;
			if (ub_cancel(r->ctx, q[i].id) == 0) {
				/* cancelled: its callback will never run */
				pthread_mutex_lock(&b.mu);
				if (!q[i].done) {
					q[i].done = true;
					q[i].err = -1;  /* timeout, below */
					b.left--;
				}
				pthread_mutex_unlock(&b.mu);
			}
		}
		free(late);
		pthread_mutex_lock(&b.mu);
		/* answers that raced the cancel are on their way */
		while (b.left > 0)
			pthread_cond_wait(&b.cv, &b.mu);
	}
	pthread_mutex_unlock(&b.mu);
	for (size_t i = 0; i < n; i++) {
		if (!q[i].submitted)
			continue;
		if (q[i].err == -1 && q[i].res == NULL) {
			out[i].status = DNS_TEMPFAIL;
			snprintf(out[i].why, sizeof(out[i].why), "timeout after %lld ms", budget);
			atomic_fetch_add(&r->timeouts, 1);
			atomic_fetch_add(&r->failures, 1);
		} else
			fill(r, &out[i], types[i], q[i].err, q[i].res);
		if (q[i].res)
			ub_resolve_free(q[i].res);
	}
	for (size_t i = 0; i < n; i++)
		if (out[i].status != DNS_TEMPFAIL && out[i].status != DNS_PERMFAIL)
			ok++;
	pthread_mutex_destroy(&b.mu);
	pthread_cond_destroy(&b.cv);
	free(q);
	return ok;
}

void
dns_answer_free(struct dns_answer *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->data[i]);
		free(a->text[i]);
	}
	free(a->data);
	free(a->len);
	free(a->text);
	a->data = NULL;
	a->len = NULL;
	a->text = NULL;
	a->n = 0;
}

long long
resolver_timeout_ms(const struct resolver *r)
{
	return r->timeout_ms;
}

void
resolver_stats(const struct resolver *r, unsigned long long *queries,
    unsigned long long *failures, unsigned long long *timeouts)
{
	*queries = atomic_load(&r->queries);
	*failures = atomic_load(&r->failures);
	*timeouts = atomic_load(&r->timeouts);
}

bool
dns_reverse_name(const char *ip, const char *zone, char *out, size_t outsz)
{
	unsigned char a[16];
	int n;

	if (inet_pton(AF_INET, ip, a) == 1)
		n = snprintf(out, outsz, "%u.%u.%u.%u%s%s", a[3], a[2], a[1], a[0],
		    zone && *zone ? "." : "", zone ? zone : "");
	else if (inet_pton(AF_INET6, ip, a) == 1) {
		static const char hx[] = "0123456789abcdef";
		char b[80];
		size_t o = 0;
		for (int i = 15; i >= 0; i--) {
			b[o++] = hx[a[i] & 15];
			b[o++] = '.';
			b[o++] = hx[a[i] >> 4];
			b[o++] = '.';
		}
		b[o - 1] = '\0';
		n = snprintf(out, outsz, "%s%s%s", b, zone && *zone ? "." : "", zone ? zone : "");
	} else
		return false;
	return n > 0 && (size_t)n < outsz;
}
