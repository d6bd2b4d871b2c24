/*
 * resolver.h - the one DNS resolver every filter uses (libunbound).
 *
 * One resolver per worker, created with the engine, shared by all pool
 * threads (thread-safe).  It forwards to `resolver HOST:PORT` when that is
 * configured (tests point it at their own server on 127.0.0.1), otherwise it
 * uses /etc/resolv.conf.  Answers are cached by libunbound; every query is
 * bounded by `resolver-timeout`.  Calls BLOCK: pool threads only.
 */
#ifndef MOAT_RESOLVER_H
#define MOAT_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moat_conf;
struct resolver;

enum dns_status {
	DNS_OK = 0,         /* answer with >= 1 record of the type asked */
	DNS_NXDOMAIN,       /* the name does not exist */
	DNS_NODATA,         /* the name exists, no record of that type */
	DNS_TEMPFAIL,       /* SERVFAIL, timeout, network error: try later */
	DNS_PERMFAIL,       /* bad name, FORMERR, REFUSED ... */
};

/* RR types (numeric, as on the wire) */
#define DNS_T_A     1
#define DNS_T_NS    2
#define DNS_T_CNAME 5
#define DNS_T_SOA   6
#define DNS_T_PTR   12
#define DNS_T_MX    15
#define DNS_T_TXT   16
#define DNS_T_AAAA  28
#define DNS_T_SPF   99

#define DNS_MAX_RR 64    /* records kept per answer */

struct dns_answer {
	enum dns_status status;
	int     rcode;          /* DNS rcode as received, -1 on timeout/network */
	int     type;           /* the type asked */
	size_t  n;              /* records */
	unsigned char **data;   /* rdata in wire format (A: 4 bytes, AAAA: 16) */
	size_t *len;            /* rdata lengths */
	char  **text;           /* per record, a decoded form: A/AAAA dotted,
	                         * PTR/CNAME/NS name without the final dot,
	                         * MX "PREF NAME", TXT the strings concatenated */
	unsigned ttl;
	bool    secure;         /* DNSSEC validated (only with a trust anchor) */
	char    why[128];       /* for TEMPFAIL/PERMFAIL: what happened */
};

/* NULL with *err (malloc'ed) on failure */
struct resolver *resolver_new(const struct moat_conf *, char **err);
void resolver_free(struct resolver *);
/* BLOCKING: one lookup, bounded by the configured timeout.  Fills *a
 * (always: status says what happened); returns a->status. */
enum dns_status resolver_query(struct resolver *, const char *name, int type, struct dns_answer *a);
/* BLOCKING: n lookups at once (names[i] of type types[i] into out[i]),
 * all bounded by ONE deadline, resolver-timeout from now: a batch costs
 * one timeout at worst, however many queries are slow.  Every out[i] is
 * filled (free each with dns_answer_free); a query still out at the
 * deadline is DNS_TEMPFAIL "timeout".  Returns how many got an answer
 * (OK, NXDOMAIN or NODATA). */
size_t resolver_query_many(struct resolver *, const char *const *names, const int *types,
    size_t n, struct dns_answer *out);
/* the same with the caller's deadline (now_ms() clock, CLOCK_MONOTONIC):
 * for a filter whose lookups depend on each other (PTR, then A) and that
 * must still cost one resolver-timeout at worst.  With the deadline
 * passed nothing is asked: every out[i] is DNS_TEMPFAIL. */
size_t resolver_query_many_by(struct resolver *, const char *const *names, const int *types,
    size_t n, struct dns_answer *out, uint64_t deadline_ms);
/* resolver-timeout in milliseconds */
long long resolver_timeout_ms(const struct resolver *);
void dns_answer_free(struct dns_answer *);
/* counters for metrics: queries, failures (TEMPFAIL), timeouts */
void resolver_stats(const struct resolver *, unsigned long long *queries,
    unsigned long long *failures, unsigned long long *timeouts);

/* helpers */
/* "4.3.2.1.zone" for 1.2.3.4, nibble form for IPv6; false if not an address */
bool dns_reverse_name(const char *ip, const char *zone, char *out, size_t outsz);

#endif
