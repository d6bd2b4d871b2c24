/*
 * spf.h - SPF (RFC 7208) through libspf2, its DNS answered by moat's
 * resolver, its input checked by spf_record.c (docs/spf.md).
 * The filter is filter_spf (filter.h); spf_eval() is the entry point the
 * filter and `moat spf check` share.  BLOCKING: pool threads and the CLI.
 */
#ifndef MOAT_SPF_H
#define MOAT_SPF_H

#include <stdbool.h>

#include "filter.h"

struct resolver;

struct spf_out {
	enum auth_res res;      /* AR_UNSET: not evaluated */
	bool    helo;           /* the identity was the HELO name */
	char    domain[256];    /* the domain checked */
	char    why[160];       /* what decided: "matched -all", "DNS timeout" ... */
	char    expl[256];      /* fail: the explanation (exp= or ours) */
	bool    expl_default;   /* expl is ours: no usable exp= */
	unsigned lookups;       /* DNS-querying terms evaluated */
	unsigned voids;         /* of which void */
};

/* what an evaluation needs besides the resolver */
struct spf_in {
	const char *ip;         /* client address, text */
	const char *helo;       /* as given ("" if none) */
	const char *sender;     /* envelope sender, "" for <> */
	const char *receiver;   /* our name, for %{r} and the header */
	long long budget_ms;    /* wall clock for both identities; 0 = 20 s */
};

/*
 * check_host() for both identities: *mfrom gets the MAIL FROM result (the
 * HELO identity, postmaster@HELO, when the sender is <>, with helo=true);
 * *helo gets the HELO identity when the HELO name is a FQDN (RFC 7208
 * 2.3), else res AR_NONE.  Never fails: errors are temperror/permerror.
 */
void spf_eval(struct resolver *, const struct spf_in *, struct spf_out *mfrom,
    struct spf_out *helo);

/* one identity: domain and the sender address for the macros */
void spf_check_host(struct resolver *, const struct spf_in *, const char *domain,
    const char *sender, struct spf_out *);

#endif
