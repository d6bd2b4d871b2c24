/*
 * spf_record.c - the RFC 7208 record grammar, checked by us before libspf2
 * compiles anything (see spf_record.h and docs/spf.md).
 * Runs in: pool threads (and the CLI).  Input: DNS TXT data (hostile).
 * Pure functions: no I/O, no allocation, bounded by the input length.
 */
#include "config.h"
#include "spf_record.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool
is_alpha(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static bool
is_alnum(int c)
{
	return is_alpha(c) || is_digit(c);
}

bool
spf_record_is_v1(const char *txt, size_t len)
{
	return len >= 6 && strncasecmp(txt, "v=spf1", 6) == 0 && (len == 6 || txt[6] == ' ');
}

/*
 * macro-string = *( macro-expand / macro-literal ); sets *end_macro when
 * the string ends with a macro-expand (a valid domain-end)
 */
static bool
macro_string_ok(const char *s, size_t len, bool exp, bool *end_macro, const char **why)
{
	size_t i = 0;

	*end_macro = false;
	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		if (c != '%') {
			if (c < 0x21 || c > 0x7e) {
				*why = "invalid character in a macro-string";
				return false;
			}
			i++;
			*end_macro = false;
			continue;
		}
		if (i + 1 >= len) {
			*why = "a lone % at the end of a macro-string";
			return false;
		}
		c = (unsigned char)s[i + 1];
		if (c == '%' || c == '_' || c == '-') {
			i += 2;
			*end_macro = true;
			continue;
		}
		if (c != '{') {
			*why = "invalid % escape (RFC 7208 7.1)";
			return false;
		}
		i += 2;
		if (i >= len) {
			*why = "unterminated macro";
			return false;
		}
		c = (unsigned char)s[i];
		switch (c | 0x20) {
		case 's': case 'l': case 'o': case 'd': case 'i': case 'p': case 'h': case 'v':
			break;
		case 'c': case 'r': case 't':
			if (!exp) {
				*why = "macro letters c, r and t are only allowed in exp text (RFC 7208 7.3)";
				return false;
			}
			break;
		default:
			*why = "invalid macro letter";
			return false;
		}
		i++;
		/* transformers = *DIGIT [ "r" ]: a number, if given, is >= 1 */
		{
			size_t d0 = i;
			unsigned n = 0;
			while (i < len && is_digit(s[i])) {
				n = n * 10 + (unsigned)(s[i] - '0');
				if (n > 1000) {
					*why = "macro transformer out of range";
					return false;
				}
				i++;
			}
			if (i > d0 && n == 0) {
				*why = "macro transformer of 0 (RFC 7208 7.3)";
				return false;
			}
		}
		if (i < len && (s[i] == 'r' || s[i] == 'R'))
			i++;
		while (i < len && strchr(".-+,/_=", s[i]) != NULL)
			i++;
		if (i >= len || s[i] != '}') {
			*why = "invalid macro (RFC 7208 7.1)";
			return false;
		}
		i++;
		*end_macro = true;
	}
	return true;
}

/* toplabel = ( *alphanum ALPHA *alphanum ) /
 *            ( 1*alphanum "-" *( alphanum / "-" ) alphanum ) */
static bool
toplabel_ok(const char *s, size_t len)
{
	bool alpha = false;

	if (len == 0 || len > 63)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (is_alpha(s[i]))
			alpha = true;
		else if (s[i] == '-') {
			if (i == 0 || i == len - 1)
				return false;
		} else if (!is_digit(s[i]))
			return false;
	}
	if (alpha)
		return true;
	/* all digits and hyphens: valid only with a hyphen inside */
	return memchr(s, '-', len) != NULL;
}

bool
spf_domain_spec_ok(const char *s, size_t len, bool exp, const char **why)
{
	bool end_macro;
	size_t l = len, dot;

	if (len == 0) {
		*why = "empty domain-spec";
		return false;
	}
	if (!macro_string_ok(s, len, exp, &end_macro, why))
		return false;
	if (end_macro)
		return true;
	/* domain-end = "." toplabel [ "." ] */
	if (s[l - 1] == '.')
		l--;
	for (dot = l; dot > 0 && s[dot - 1] != '.'; dot--)
		;
	if (dot == 0) {
		*why = "domain-spec without a top-level label (RFC 7208 7.1)";
		return false;
	}
	if (!toplabel_ok(s + dot, l - dot)) {
		*why = "invalid top-level label in a domain-spec (RFC 7208 7.1)";
		return false;
	}
	return true;
}

bool
spf_domain_ok(const char *d)
{
	size_t len = strlen(d), lab = 0, labels = 0;
	bool digits = true;             /* the current label is all digits */

	if (len > 0 && d[len - 1] == '.')
		len--;
	if (len == 0 || len > 253)
		return false;
	for (size_t i = 0; i <= len; i++) {
		if (i == len || d[i] == '.') {
			if (lab == 0 || lab > 63)
				return false;
			labels++;
			lab = 0;
			if (i == len && digits)
				return false;   /* an address, not a name */
			digits = true;
			continue;
		}
		if (!is_digit(d[i]))
			digits = false;
		if ((unsigned char)d[i] <= 0x20 || (unsigned char)d[i] >= 0x7f)
			return false;
		lab++;
	}
	return labels >= 2;
}

/* "/N" with no leading zero and N <= max; returns the value or -1 */
static int
cidr_value(const char *s, size_t len, int max)
{
	int v = 0;

	if (len == 0 || len > 3 || (len > 1 && s[0] == '0'))
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (!is_digit(s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= max ? v : -1;
}

/* splits "[:domain-spec][/N][//M]" (the text after a/mx); -2 = absent */
static bool
dual_cidr(const char *s, size_t len, size_t *speclen, int *c4, int *c6, const char **why)
{
	size_t end = len, j;

	*c4 = *c6 = -2;
	for (j = end; j > 0 && is_digit(s[j - 1]); j--)
		;
	if (j < end && j >= 2 && s[j - 1] == '/' && s[j - 2] == '/') {
		if ((*c6 = cidr_value(s + j, end - j, 128)) < 0) {
			*why = "invalid IPv6 prefix length";
			return false;
		}
		end = j - 2;
	}
	for (j = end; j > 0 && is_digit(s[j - 1]); j--)
		;
	if (j < end && j >= 1 && s[j - 1] == '/' && !(j >= 2 && s[j - 2] == '/')) {
		if ((*c4 = cidr_value(s + j, end - j, 32)) < 0) {
			*why = "invalid IPv4 prefix length";
			return false;
		}
		end = j - 1;
	}
	*speclen = end;
	return true;
}

struct out {
	char   *p;
	size_t  sz, o;
	bool    over;
};

static void
outf(struct out *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
outf(struct out *w, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (w->over)
		return;
	va_start(ap, fmt);
	n = vsnprintf(w->p + w->o, w->sz - w->o, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= w->sz - w->o) {
		w->over = true;
		return;
	}
	w->o += (size_t)n;
}

/* a checked domain-spec, with macro transformers over 128 written as 128
 * (a name has at most 127 labels: the same expansion; libspf2 refuses
 * more than 128) */
static void
out_spec(struct out *w, const char *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		if (s[i] == '%' && i + 2 < len && s[i + 1] == '{') {
			unsigned n = 0;
			size_t d;
			outf(w, "%%{%c", s[i + 2]);
			for (d = i + 3; d < len && is_digit(s[d]); d++)
				n = n * 10 + (unsigned)(s[d] - '0');
			if (d > i + 3)
				outf(w, "%u", n > 128 ? 128 : n);
			i = d;
			continue;
		}
		if (s[i] == '%' && i + 1 < len) {
			outf(w, "%c%c", s[i], s[i + 1]);
			i += 2;
			continue;
		}
		outf(w, "%c", s[i++]);
	}
}

enum mech { M_ALL, M_INCLUDE, M_A, M_MX, M_PTR, M_IP4, M_IP6, M_EXISTS, M_BAD };

static enum mech
mech_name(const char *s, size_t len)
{
	static const struct { const char *n; enum mech m; } t[] = {
		{ "all", M_ALL }, { "include", M_INCLUDE }, { "a", M_A }, { "mx", M_MX },
		{ "ptr", M_PTR }, { "ip4", M_IP4 }, { "ip6", M_IP6 }, { "exists", M_EXISTS },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strlen(t[i].n) == len && strncasecmp(t[i].n, s, len) == 0)
			return t[i].m;
	return M_BAD;
}

/* name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ), then "=" */
static size_t
modifier_name(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || !is_alpha(s[0]))
		return 0;
	for (i = 1; i < len && (is_alnum(s[i]) || s[i] == '-' || s[i] == '_' || s[i] == '.'); i++)
		;
	return i < len && s[i] == '=' ? i : 0;
}

int
spf_record_check(const char *rec, size_t len, bool v6client, char *canon, size_t canonsz,
    const char **why)
{
	struct out w = { canon, canonsz, 0, false };
	const char *redirect = NULL, *exp = NULL;
	size_t redirectlen = 0, explen = 0, i;
	bool all = false;

	*why = "invalid record";
	if (canonsz == 0)
		return -1;
	canon[0] = '\0';
	if (len > SPF_RECORD_MAX) {
		*why = "record too long";
		return -1;
	}
	if (!spf_record_is_v1(rec, len)) {
		*why = "not an SPF version 1 record";
		return -1;
	}
	for (i = 0; i < len; i++) {
		if ((unsigned char)rec[i] < 0x20 || (unsigned char)rec[i] > 0x7e) {
			*why = "control or non-ASCII character in the record (RFC 7208 12)";
			return -1;
		}
		if (rec[i] == '_' && len - i >= sizeof(SPF_CIDR0_SUFFIX) - 2 &&
		    strncasecmp(rec + i, &SPF_CIDR0_SUFFIX[1], sizeof(SPF_CIDR0_SUFFIX) - 2) == 0) {
			*why = "the record holds a name moat reserves";
			return -1;
		}
	}
	outf(&w, "v=spf1");
	i = 6;
	while (i < len) {
		const char *t;
		size_t tl, n;
		char q = 0;
		enum mech m;

		while (i < len && rec[i] == ' ')
			i++;
		if (i >= len)
			break;
		t = rec + i;
		for (tl = 0; i + tl < len && rec[i + tl] != ' '; tl++)
			;
		i += tl;

		/* modifier */
		if ((n = modifier_name(t, tl)) > 0) {
			const char *v = t + n + 1;
			size_t vl = tl - n - 1;
			bool em;
			if (n == 8 && strncasecmp(t, "redirect", 8) == 0) {
				if (redirect) {
					*why = "more than one redirect modifier (RFC 7208 6)";
					return -1;
				}
				if (!spf_domain_spec_ok(v, vl, false, why))
					return -1;
				redirect = v;
				redirectlen = vl;
			} else if (n == 3 && strncasecmp(t, "exp", 3) == 0) {
				if (exp) {
					*why = "more than one exp modifier (RFC 7208 6)";
					return -1;
				}
				if (!spf_domain_spec_ok(v, vl, false, why))
					return -1;
				exp = v;
				explen = vl;
			} else if (!macro_string_ok(v, vl, true, &em, why))
				return -1;
			continue;
		}

		/* directive = [ qualifier ] mechanism */
		if (tl > 0 && strchr("+-?~", t[0]) != NULL) {
			q = t[0];
			t++;
			tl--;
		}
		for (n = 0; n < tl && t[n] != ':' && t[n] != '/'; n++)
			;
		if ((m = mech_name(t, n)) == M_BAD) {
			*why = "unknown mechanism (RFC 7208 5)";
			return -1;
		}
		const char *arg = t + n;        /* ":..." or "/..." or "" */
		size_t argl = tl - n;
		char qs[2] = { q, '\0' };
		switch (m) {
		case M_ALL:
			if (argl) {
				*why = "\"all\" takes no argument";
				return -1;
			}
			if (!all)
				outf(&w, " %sall", qs);
			all = true;
			break;
		case M_INCLUDE:
		case M_EXISTS:
			if (argl < 1 || arg[0] != ':') {
				*why = "include and exists need \":domain\"";
				return -1;
			}
			if (!spf_domain_spec_ok(arg + 1, argl - 1, false, why))
				return -1;
			if (!all) {
				outf(&w, " %s%s:", qs, m == M_INCLUDE ? "include" : "exists");
				out_spec(&w, arg + 1, argl - 1);
			}
			break;
		case M_PTR:
			if (argl && arg[0] != ':') {
				*why = "ptr takes no prefix length";
				return -1;
			}
			if (argl && !spf_domain_spec_ok(arg + 1, argl - 1, false, why))
				return -1;
			if (!all) {
				outf(&w, " %sptr", qs);
				out_spec(&w, arg, argl);
			}
			break;
		case M_A:
		case M_MX: {
			size_t sl;
			int c4, c6;
			const char *mn = m == M_A ? "a" : "mx";
			if (!dual_cidr(arg, argl, &sl, &c4, &c6, why))
				return -1;
			if (sl > 0) {
				if (arg[0] != ':') {
					*why = "invalid a or mx argument";
					return -1;
				}
				if (!spf_domain_spec_ok(arg + 1, sl - 1, false, why))
					return -1;
			}
			if (all)
				break;
			/* libspf2 cannot hold a prefix of 0: only the one for
			 * the client's family matters, so drop the other */
			if (v6client)
				c4 = -2;
			else
				c6 = -2;
			if (c4 == 0 || c6 == 0) {
				outf(&w, " %s%s", qs, mn);
				if (sl > 0)
					out_spec(&w, arg, sl);
				else
					outf(&w, ":%%{d}");
				outf(&w, "%s", SPF_CIDR0_SUFFIX);
				break;
			}
			outf(&w, " %s%s", qs, mn);
			out_spec(&w, arg, sl);
			if (c4 >= 0)
				outf(&w, "/%d", c4);
			if (c6 >= 0)
				outf(&w, "//%d", c6);
			break;
		}
		case M_IP4:
		case M_IP6: {
			char ip[64];
			unsigned char bin[16];
			size_t al, j;
			int c = -2;
			bool six = m == M_IP6;
			if (argl < 2 || arg[0] != ':') {
				*why = "ip4 and ip6 need \":address\"";
				return -1;
			}
			arg++;
			argl--;
			for (j = argl; j > 0 && is_digit(arg[j - 1]); j--)
				;
			al = argl;
			if (j < argl && j >= 1 && arg[j - 1] == '/') {
				if ((c = cidr_value(arg + j, argl - j, six ? 128 : 32)) < 0) {
					*why = "invalid prefix length";
					return -1;
				}
				al = j - 1;
			}
			if (al == 0 || al >= sizeof(ip)) {
				*why = "invalid address";
				return -1;
			}
			memcpy(ip, arg, al);
			ip[al] = '\0';
			if (inet_pton(six ? AF_INET6 : AF_INET, ip, bin) != 1) {
				*why = six ? "invalid ip6 address (RFC 7208 5.6)" :
				    "invalid ip4 address (RFC 7208 5.6)";
				return -1;
			}
			if (all)
				break;
			if (c == 0) {
				/* the whole address space, as two halves */
				if (six)
					outf(&w, " %sip6:::/1 %sip6:8000::/1", qs, qs);
				else
					outf(&w, " %sip4:0.0.0.0/1 %sip4:128.0.0.0/1", qs, qs);
			} else if (c > 0)
				outf(&w, " %s%s:%s/%d", qs, six ? "ip6" : "ip4", ip, c);
			else
				outf(&w, " %s%s:%s", qs, six ? "ip6" : "ip4", ip);
			break;
		}
		case M_BAD:
			break;
		}
	}
	if (redirect && !all) {
		outf(&w, " redirect=");
		out_spec(&w, redirect, redirectlen);
	}
	if (exp) {
		outf(&w, " exp=");
		out_spec(&w, exp, explen);
	}
	if (w.over) {
		*why = "record too long";
		canon[0] = '\0';
		return -1;
	}
	return 0;
}

/* RFC 7208 7.3: URL-escape all but the unreserved characters of RFC 3986 */
static bool
put_escaped(struct out *w, const char *s, size_t len, bool esc)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!esc || is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~')
			outf(w, "%c", c);
		else
			outf(w, "%%%02X", c);
	}
	return !w->over;
}

/* one macro: split on the delimiters, reverse, keep the rightmost n */
static bool
put_macro(struct out *w, const char *val, unsigned n, bool rev, const char *delims,
    bool esc)
{
	const char *part[128];
	size_t plen[128], np = 0, vl = strlen(val);
	size_t start = 0;

	for (size_t i = 0; i <= vl; i++) {
		if (i == vl || strchr(delims, val[i]) != NULL) {
			if (np == 128)
				return false;
			part[np] = val + start;
			plen[np++] = i - start;
			start = i + 1;
		}
	}
	if (rev)
		for (size_t a = 0, b = np - 1; a < b; a++, b--) {
			const char *tp = part[a];
			size_t tl = plen[a];
			part[a] = part[b];
			plen[a] = plen[b];
			part[b] = tp;
			plen[b] = tl;
		}
	size_t first = n > 0 && n < np ? np - n : 0;
	for (size_t k = first; k < np; k++) {
		if (k > first)
			put_escaped(w, ".", 1, false);
		put_escaped(w, part[k], plen[k], esc);
	}
	return !w->over;
}

int
spf_expand_exp(const char *in, size_t len, const struct spf_macro_vals *v, char *out,
    size_t outsz, const char **why)
{
	struct out w = { out, outsz, 0, false };
	size_t i = 0;

	*why = "invalid explanation";
	if (outsz == 0)
		return -1;
	out[0] = '\0';
	while (i < len) {
		unsigned char c = (unsigned char)in[i];
		if (c == ' ') {
			outf(&w, " ");
			i++;
			continue;
		}
		if (c != '%') {
			if (c < 0x21 || c > 0x7e) {
				*why = "invalid character in the explanation";
				return -1;
			}
			outf(&w, "%c", c);
			i++;
			continue;
		}
		if (i + 1 >= len) {
			*why = "a lone % in the explanation";
			return -1;
		}
		c = (unsigned char)in[i + 1];
		if (c == '%' || c == '_' || c == '-') {
			outf(&w, "%s", c == '%' ? "%" : c == '_' ? " " : "%20");
			i += 2;
			continue;
		}
		if (c != '{' || i + 2 >= len) {
			*why = "invalid % escape in the explanation";
			return -1;
		}
		i += 2;
		char letter = in[i++];
		const char *val;
		switch (letter | 0x20) {
		case 's': val = v->s; break;
		case 'l': val = v->l; break;
		case 'o': val = v->o; break;
		case 'd': val = v->d; break;
		case 'i': val = v->i; break;
		case 'p': val = v->p; break;
		case 'v': val = v->v; break;
		case 'h': val = v->h; break;
		case 'c': val = v->c; break;
		case 'r': val = v->r; break;
		case 't': val = v->t; break;
		default:
			*why = "invalid macro letter in the explanation";
			return -1;
		}
		unsigned n = 0;
		size_t d0 = i;
		while (i < len && is_digit(in[i])) {
			n = n * 10 + (unsigned)(in[i] - '0');
			if (n > 1000) {
				*why = "macro transformer out of range";
				return -1;
			}
			i++;
		}
		if (i > d0 && n == 0) {
			*why = "macro transformer of 0";
			return -1;
		}
		bool rev = false;
		if (i < len && (in[i] == 'r' || in[i] == 'R')) {
			rev = true;
			i++;
		}
		char delims[8];
		size_t nd = 0;
		while (i < len && strchr(".-+,/_=", in[i]) != NULL) {
			if (nd + 1 < sizeof(delims) && memchr(delims, in[i], nd) == NULL)
				delims[nd++] = in[i];
			i++;
		}
		delims[nd] = '\0';
		if (i >= len || in[i] != '}') {
			*why = "invalid macro in the explanation";
			return -1;
		}
		i++;
		if (!put_macro(&w, val ? val : "", n, rev, nd ? delims : ".",
		    letter >= 'A' && letter <= 'Z'))
			break;
	}
	if (w.over) {
		*why = "explanation too long";
		out[0] = '\0';
		return -1;
	}
	return 0;
}
