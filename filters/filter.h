/*
 * filter.h - the one interface every filter implements (docs/filter-engine.md).
 *
 * The engine (engine.c) keeps a static table of filters.  Each declares the
 * earliest SMTP stage whose data it needs.  init() runs when the worker
 * loads the engine (and again on reload, building a new state beside the
 * old one); it returns 0 with *state NULL when the filter is not configured,
 * 0 with a state when it is, -1 with *err (malloc'ed) on a hard error.
 * check() runs in a pool thread (BLOCKING allowed: DNS, disk), once per
 * message, and adds symbols to the verdict; it must bound its own time
 * (the resolver's timeouts) and never fail the message for its own errors:
 * it adds a *_TEMPFAIL / *_ERROR symbol and applies its configured default.
 * States are shared read-only by the pool threads (or lock internally).
 */
#ifndef MOAT_FILTER_H
#define MOAT_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "engine.h"

struct moat_conf;
struct mime_msg;
struct lists;
struct resolver;

enum flt_stage { FLT_CONNECT, FLT_HELO, FLT_MAIL, FLT_RCPT, FLT_DATA };

/* RFC 8601 result values, shared by SPF, DKIM and DMARC */
enum auth_res {
	AR_UNSET = 0,     /* the check did not run */
	AR_PASS, AR_FAIL, AR_SOFTFAIL, AR_NEUTRAL, AR_NONE,
	AR_TEMPERROR, AR_PERMERROR, AR_POLICY,
};
const char *auth_res_name(enum auth_res);

#define AUTH_MAX_DKIM 8
struct auth_info {
	/* SPF (filters/spf.c): the MAIL FROM identity, or HELO for <> */
	enum auth_res spf;
	bool    spf_helo;               /* the result is for the HELO identity */
	char    spf_domain[256];        /* the domain checked */
	/* DKIM (filters/dkim.c): one entry per signature, in header order */
	struct auth_dkim {
		enum auth_res res;
		char    domain[256];    /* d= */
		char    selector[64];   /* s= */
		char    algo[24];       /* a= "rsa-sha256", "ed25519-sha256" */
		char    b[12];          /* first 8 characters of b= (RFC 6008) */
		char    reason[96];     /* "body hash mismatch", "key too small" ... */
	} dkim[AUTH_MAX_DKIM];
	size_t  ndkim;
	bool    dkim_none;              /* DKIM ran and found no signature */
	/* DMARC (filters/dmarc.c) */
	enum auth_res dmarc;
	char    dmarc_domain[256];      /* RFC5322.From domain */
	char    dmarc_policy[16];       /* "none", "quarantine", "reject" as applied */
};

/* everything a filter may look at; built by the session (or the milter) */
struct msg_ctx {
	const char *qid;
	const struct sockaddr *client;  /* NULL when unknown (tests) */
	const char *client_ip;          /* "192.0.2.1", "2001:db8::1"; "" when unknown */
	const char *client_name;        /* verified reverse name, or NULL (not known) */
	const char *helo;               /* as given, or "" */
	const char *sender;             /* envelope sender, "" for <> */
	const char *const *rcpts;
	size_t  nrcpts;
	const char *auth_user;          /* authenticated user or NULL */
	bool    tls;
	const char *msg;                /* the message as received (untrusted) */
	size_t  len;
	struct mime_msg *mime;          /* parsed once; NULL if unparseable */
	const char *from_domain;        /* RFC5322.From domain, lowercase; NULL if none */
	const struct lists *lists;      /* may be NULL */
	struct resolver *res;           /* the engine's resolver (thread-safe) */
	struct auth_info auth;          /* filled by SPF, DKIM, DMARC in that order */
	bool    trusted;                /* authenticated or allow-listed: skip spam checks */
	bool    client_done;            /* the client checks ran at RCPT already (dnsbl:
	                                 * only the message's URLs are left) */
};

struct filter {
	const char *name;
	enum flt_stage stage;           /* the earliest stage whose data it needs */
	int  (*init)(const struct moat_conf *, void **state, char **err);
	void (*check)(void *state, struct msg_ctx *, struct verdict *);
	void (*fini)(void *state);
};

/* for filters: add a scored symbol; force an action (the strongest wins:
 * reject > tempfail > quarantine > tag > accept); add a header field
 * ("Received-SPF: pass ...", no CRLF) written above the message */
void verdict_add(struct verdict *, const char *name, double score, const char *reason);
void verdict_force(struct verdict *, enum verdict_action, const char *why);
void verdict_add_header(struct verdict *, const char *field);
/* the score configured with "score SYMBOL N", else def */
double filter_score(const struct moat_conf *, const char *symbol, double def);

#endif
