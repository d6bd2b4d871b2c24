/*
 * spf_record.h - our own RFC 7208 checks in front of libspf2 (docs/spf.md).
 *
 * Pure functions over (pointer, length): no I/O, no globals.  Every SPF
 * record fetched from DNS passes spf_record_check() before libspf2 sees
 * it; libspf2 only ever compiles the canonical text built here.
 */
#ifndef MOAT_SPF_RECORD_H
#define MOAT_SPF_RECORD_H

#include <stdbool.h>
#include <stddef.h>

/* the longest record we accept (RFC 7208 3.4 advises < 450 bytes; TXT
 * records of several strings can be longer: bounded anyway) */
#define SPF_RECORD_MAX  4096

/* appended to the domain of an a or mx term whose prefix length is 0 for
 * the client's family: spf.c's DNS layer answers such a name's address
 * queries with the client's address when the name has any (RFC 7208 5.3:
 * "a/0" matches any address); a record holding it is refused */
#define SPF_CIDR0_SUFFIX "._moat-cidr0"

/* true if the TXT string is an SPF version 1 record: "v=spf1" followed by
 * a space or the end (RFC 7208 4.5; case-insensitive) */
bool spf_record_is_v1(const char *txt, size_t len);

/*
 * Checks the record against the ABNF of RFC 7208 section 12 and the rules
 * of sections 4.6 (terms), 5 (mechanisms), 6 (modifiers: redirect and exp
 * at most once) and 7 (macros).  On success writes into canon (NUL
 * terminated) the record as libspf2 may see it:
 *   - mechanisms in order, up to and including the first "all";
 *   - "redirect=" last, and only when there is no "all" (RFC 7208 6.1);
 *   - "exp=" kept; unknown modifiers (checked, then) dropped;
 *   - ip4/ip6 with a /0 prefix written as two /1 networks (libspf2 takes
 *     a prefix of 0 as "none given");
 *   - a and mx: only the prefix length of the client's family kept; a
 *     prefix of 0 written as the domain (or %{d}) + SPF_CIDR0_SUFFIX.
 * Returns 0, or -1 with *why set to a static description.
 */
int spf_record_check(const char *rec, size_t len, bool v6client, char *canon, size_t canonsz,
    const char **why);

/* a domain-spec (macro-string domain-end, RFC 7208 7.1) */
bool spf_domain_spec_ok(const char *s, size_t len, bool exp, const char **why);

/* a domain name usable as an SPF identity (RFC 7208 4.3): ASCII labels of
 * 1..63 characters, at least two labels, the last not all digits (that is
 * an address), 253 characters at most; one final dot allowed */
bool spf_domain_ok(const char *d);

/* the values of the macro letters (RFC 7208 7.3), as text */
struct spf_macro_vals {
	const char *s;          /* sender: local@domain */
	const char *l;          /* local part */
	const char *o;          /* domain of the sender */
	const char *d;          /* current domain */
	const char *i;          /* IP: dotted quad, or 32 dot-separated nibbles */
	const char *p;          /* validated name of the IP, or "unknown" */
	const char *v;          /* "in-addr" or "ip6" */
	const char *h;          /* HELO name */
	const char *c;          /* IP, readable (exp only) */
	const char *r;          /* receiving host (exp only) */
	const char *t;          /* seconds since the epoch (exp only) */
};

/*
 * Expands an explain-string (exp text, RFC 7208 6.2 and 7: macro-strings
 * and spaces) into out.  Returns 0, or -1 with *why on a syntax error or
 * when out is too small.
 */
int spf_expand_exp(const char *in, size_t len, const struct spf_macro_vals *,
    char *out, size_t outsz, const char **why);

#endif
