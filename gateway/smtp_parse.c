/*
 * smtp_parse.c - pure parsers for the SMTP server (see smtp_parse.h).
 * Runs in: the worker, on the event loop.  Input: untrusted network bytes.
 * Every function works on (pointer, length), never past it, allocates
 * nothing, and bounds its output buffers.
 */
#include "config.h"
#include "smtp_parse.h"
#include "util.h"

#include <arpa/inet.h>
#include <string.h>

static const struct { const char *verb; enum smtp_cmd cmd; } verbs[] = {
	{ "HELO", CMD_HELO }, { "EHLO", CMD_EHLO }, { "LHLO", CMD_LHLO },
	{ "MAIL", CMD_MAIL }, { "RCPT", CMD_RCPT }, { "DATA", CMD_DATA },
	{ "BDAT", CMD_BDAT }, { "RSET", CMD_RSET }, { "NOOP", CMD_NOOP },
	{ "QUIT", CMD_QUIT }, { "HELP", CMD_HELP }, { "VRFY", CMD_VRFY },
	{ "EXPN", CMD_EXPN }, { "STARTTLS", CMD_STARTTLS }, { "AUTH", CMD_AUTH },
	{ "ETRN", CMD_ETRN },
	/* HTTP verbs: someone pointed a browser or proxy at us */
	{ "GET", CMD_HTTP }, { "POST", CMD_HTTP }, { "CONNECT", CMD_HTTP },
	{ "HEAD", CMD_HTTP }, { "PUT", CMD_HTTP },
};

void
smtp_parse_command(const char *line, size_t len, struct smtp_command *out)
{
	size_t v = 0, i;

	out->cmd = CMD_UNKNOWN;
	out->arg = line + len;
	out->arglen = 0;
	while (v < len && line[v] != ' ')
		v++;
	for (i = 0; i < ARRAY_SIZE(verbs); i++)
		if (strlen(verbs[i].verb) == v && ascii_strncasecmp(line, verbs[i].verb, v) == 0) {
			out->cmd = verbs[i].cmd;
			break;
		}
	if (v < len) {
		size_t a = v + 1, e = len;
		while (e > a && (line[e - 1] == ' ' || line[e - 1] == '\t'))
			e--;
		out->arg = line + a;
		out->arglen = e - a;
	}
}

/* ---- addresses ---- */

static bool
is_atext(unsigned char c, bool utf8)
{
	if (c >= 0x80)
		return utf8;
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* length of one valid UTF-8 sequence at p (max len), 0 if invalid */
static size_t
utf8_seq(const unsigned char *p, size_t len)
{
	size_t n, i;
	unsigned cp;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) { n = 2; cp = p[0] & 0x1f; }
	else if (p[0] >= 0xe0 && p[0] <= 0xef) { n = 3; cp = p[0] & 0x0f; }
	else if (p[0] >= 0xf0 && p[0] <= 0xf4) { n = 4; cp = p[0] & 0x07; }
	else return 0;
	if (len < n)
		return 0;
	for (i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

static bool
valid_utf8(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, n;
	while (i < len) {
		if ((n = utf8_seq(p + i, len - i)) == 0)
			return false;
		i += n;
	}
	return true;
}

static bool
has_8bit(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80)
			return true;
	return false;
}

/* domain = sub-domain *("." sub-domain); lenient on '_' like Postfix */
static bool
valid_domain_part(const char *s, size_t len, bool utf8)
{
	size_t lab = 0;

	if (len == 0 || len > 255)
		return false;
	if (s[0] == '[') {
		char tmp[64];
		if (s[len - 1] != ']' || len - 2 >= sizeof(tmp))
			return false;
		memcpy(tmp, s + 1, len - 2);
		tmp[len - 2] = '\0';
		unsigned char a[16];
		if (inet_pton(AF_INET, tmp, a) == 1)
			return true;
		if (ascii_strncasecmp(tmp, "IPv6:", 5) == 0 && inet_pton(AF_INET6, tmp + 5, a) == 1)
			return true;
		return false;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (lab == 0 || s[i - 1] == '-')
				return false;
			lab = 0;
			continue;
		}
		if (c >= 0x80) {
			if (!utf8)
				return false;
		} else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_'))
			return false;
		if (lab == 0 && c == '-')
			return false;
		if (++lab > 63)
			return false;
	}
	if (lab == 0 && s[len - 1] == '.')
		return true;        /* trailing dot: tolerated */
	return lab > 0 && s[len - 1] != '-';
}

/* local-part = dot-string / quoted-string */
static bool
valid_local_part(const char *s, size_t len, bool utf8)
{
	if (len == 0 || len > 128)
		return false;
	if (s[0] == '"') {
		if (len < 2 || s[len - 1] != '"')
			return false;
		for (size_t i = 1; i < len - 1; i++) {
			unsigned char c = (unsigned char)s[i];
			if (c == '\\') {
				if (++i >= len - 1)
					return false;
				c = (unsigned char)s[i];
				if (c < 32 || c == 127)
					return false;
				continue;
			}
			if (c == '"' || c < 32 || c == 127 || (c >= 0x80 && !utf8))
				return false;
		}
		return true;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (i == 0 || i == len - 1 || s[i - 1] == '.')
				return false;
			continue;
		}
		if (!is_atext(c, utf8))
			return false;
	}
	return true;
}

/*
 * Parse a path at in[0..len): "<...>" or a bare address up to a blank.
 * Sets *consumed.  Returns 0 ok, -1 syntax, -2 needs SMTPUTF8.
 */
static int
parse_path(const char *in, size_t len, bool utf8, bool allow_null, char *out, size_t outsz,
    size_t *consumed)
{
	const char *a, *e;
	size_t alen, i;
	bool bracket = len > 0 && in[0] == '<';

	if (bracket) {
		const char *gt = NULL;
		bool q = false;
		for (i = 1; i < len; i++) {
			if (in[i] == '\\' && q) { i++; continue; }
			if (in[i] == '"') q = !q;
			else if (in[i] == '>' && !q) { gt = in + i; break; }
		}
		if (gt == NULL)
			return -1;
		a = in + 1;
		e = gt;
		*consumed = (size_t)(gt - in) + 1;
	} else {
		for (i = 0; i < len && in[i] != ' '; i++)
			;
		a = in;
		e = in + i;
		*consumed = i;
	}
	alen = (size_t)(e - a);
	/* source route: @a,@b:user@c -> user@c (RFC 5321 appendix C) */
	if (alen && a[0] == '@') {
		const char *colon = memchr(a, ':', alen);
		if (colon == NULL)
			return -1;
		alen -= (size_t)(colon + 1 - a);
		a = colon + 1;
	}
	if (alen == 0) {
		if (!allow_null || !bracket)
			return -1;
		out[0] = '\0';
		return 0;
	}
	if (alen >= outsz || alen > SMTP_PATH_MAX)
		return -1;
	for (i = 0; i < alen; i++)
		if (a[i] == '\0' || a[i] == '\r' || a[i] == '\n' || a[i] == ' ' || a[i] == '\t' ||
		    a[i] == '<' || a[i] == '>')
			if (!(a[0] == '"' && (a[i] == ' ' || a[i] == '\t' || a[i] == '<' || a[i] == '>')))
				return -1;
	if (has_8bit(a, alen)) {
		if (!valid_utf8(a, alen))
			return -1;
		if (!utf8)
			return -2;
	}
	/* split at the last '@' outside quotes */
	const char *at = NULL;
	bool q = false;
	for (i = 0; i < alen; i++) {
		if (a[i] == '\\' && q) { i++; continue; }
		if (a[i] == '"') q = !q;
		else if (a[i] == '@' && !q) at = a + i;
	}
	if (at == NULL) {
		/* only <postmaster> may come without a domain (RFC 5321 4.5.1) */
		if (alen == 10 && ascii_strncasecmp(a, "postmaster", 10) == 0 && !allow_null) {
			memcpy(out, "postmaster", 11);
			return 0;
		}
		return -1;
	}
	if (!valid_local_part(a, (size_t)(at - a), utf8) ||
	    !valid_domain_part(at + 1, alen - (size_t)(at + 1 - a), utf8))
		return -1;
	memcpy(out, a, alen);
	out[alen] = '\0';
	return 0;
}

bool
smtp_valid_xtext(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '+') {
			if (i + 2 >= len)
				return false;
			for (int k = 1; k <= 2; k++) {
				unsigned char h = (unsigned char)s[i + k];
				if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F')))
					return false;
			}
			i += 2;
			continue;
		}
		if (c < 33 || c > 126 || c == '=')
			return false;
	}
	return true;
}

/* RFC 6533 utf-8-addr-xtext: printable ASCII but '+' and '=', or UTF-8 */
static bool
valid_utf8_xtext(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x80 && (c < 0x21 || c > 0x7e || c == '+' || c == '='))
			return false;
	}
	return valid_utf8(s, len);
}

/* iterate "KEY[=VALUE]" parameters separated by blanks */
struct param {
	const char *key;
	size_t      keylen;
	const char *val;
	size_t      vallen;
	bool        hasval;
};

static bool
next_param(const char **pp, const char *end, struct param *pr)
{
	const char *p = *pp, *s, *eq;

	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	if (p >= end)
		return false;
	s = p;
	while (p < end && *p != ' ' && *p != '\t')
		p++;
	eq = memchr(s, '=', (size_t)(p - s));
	pr->key = s;
	if (eq) {
		pr->keylen = (size_t)(eq - s);
		pr->val = eq + 1;
		pr->vallen = (size_t)(p - eq - 1);
		pr->hasval = true;
	} else {
		pr->keylen = (size_t)(p - s);
		pr->val = p;
		pr->vallen = 0;
		pr->hasval = false;
	}
	*pp = p;
	return true;
}

static bool
key_is(const struct param *pr, const char *k)
{
	return strlen(k) == pr->keylen && ascii_strncasecmp(pr->key, k, pr->keylen) == 0;
}

static bool
val_is(const struct param *pr, const char *v)
{
	return strlen(v) == pr->vallen && ascii_strncasecmp(pr->val, v, pr->vallen) == 0;
}

/* skip "FROM:" / "TO:" and blanks after the colon */
static const char *
skip_prefix(const char *arg, size_t len, const char *prefix)
{
	size_t pl = strlen(prefix);
	const char *p;

	if (len < pl || ascii_strncasecmp(arg, prefix, pl) != 0)
		return NULL;
	p = arg + pl;
	while (p < arg + len && (*p == ' ' || *p == '\t'))
		p++;
	return p;
}

int
smtp_parse_mail(const char *arg, size_t len, bool utf8_ok, char *addr, size_t addrsz,
    struct smtp_mail_params *mp, const char **reply)
{
	const char *p, *end = arg + len;
	size_t used;
	struct param pr;
	unsigned seen = 0;
	int r;

	memset(mp, 0, sizeof(*mp));
	mp->size = -1;
	mp->body = BODY_7BIT;
	if ((p = skip_prefix(arg, len, "FROM:")) == NULL) {
		*reply = "501 5.5.4 Syntax: MAIL FROM:<address>";
		return -1;
	}
	/* parameters first: SMTPUTF8 decides whether an 8-bit path is allowed */
	const char *pstart = p;
	r = parse_path(p, (size_t)(end - p), true, true, addr, addrsz, &used);
	if (r == -1) {
		*reply = "501 5.1.7 Bad sender address syntax";
		return -1;
	}
	p = pstart + used;
	if (p < end && *p != ' ' && *p != '\t') {
		*reply = "501 5.1.7 Bad sender address syntax";
		return -1;
	}
	while (next_param(&p, end, &pr)) {
		unsigned bit;
		if (key_is(&pr, "SIZE")) {
			char num[24];
			long long v;
			bit = 1;
			if (!pr.hasval || pr.vallen == 0 || pr.vallen >= sizeof(num))
				goto bad;
			memcpy(num, pr.val, pr.vallen);
			num[pr.vallen] = '\0';
			if (!parse_ll(num, 0, 9223372036854775807LL, &v))
				goto bad;
			mp->size = v;
		} else if (key_is(&pr, "BODY")) {
			bit = 2;
			if (val_is(&pr, "7BIT")) mp->body = BODY_7BIT;
			else if (val_is(&pr, "8BITMIME")) mp->body = BODY_8BITMIME;
			else if (val_is(&pr, "BINARYMIME")) mp->body = BODY_BINARYMIME;
			else goto bad;
		} else if (key_is(&pr, "SMTPUTF8")) {
			bit = 4;
			if (pr.hasval || !utf8_ok)
				goto bad;
			mp->smtputf8 = true;
		} else if (key_is(&pr, "RET")) {
			bit = 8;
			if (val_is(&pr, "FULL")) mp->ret = DSN_RET_FULL;
			else if (val_is(&pr, "HDRS")) mp->ret = DSN_RET_HDRS;
			else goto bad;
		} else if (key_is(&pr, "ENVID")) {
			bit = 16;
			if (!pr.hasval || pr.vallen == 0 || pr.vallen > 100 ||
			    !smtp_valid_xtext(pr.val, pr.vallen))
				goto bad;
			memcpy(mp->envid, pr.val, pr.vallen);
			mp->envid[pr.vallen] = '\0';
		} else if (key_is(&pr, "AUTH")) {
			bit = 32;
			if (!pr.hasval || !smtp_valid_xtext(pr.val, pr.vallen))
				goto bad;
			mp->auth_seen = true;
		} else {
			*reply = "555 5.5.4 Unsupported option in MAIL FROM";
			return -1;
		}
		if (seen & bit) {
			*reply = "501 5.5.4 Duplicate MAIL FROM parameter";
			return -1;
		}
		seen |= bit;
	}
	if (mp->body == BODY_BINARYMIME) {
		/* needs BDAT; checked by the session when DATA is used */
	}
	if (has_8bit(addr, strlen(addr)) && !mp->smtputf8) {
		*reply = "553 5.6.7 Non-ASCII sender address requires the SMTPUTF8 parameter";
		return -1;
	}
	return 0;
bad:
	*reply = "501 5.5.4 Bad MAIL FROM parameter";
	return -1;
}

int
smtp_parse_rcpt(const char *arg, size_t len, bool utf8_ok, char *addr, size_t addrsz,
    struct smtp_rcpt_params *rp, const char **reply)
{
	const char *p, *end = arg + len;
	size_t used;
	struct param pr;
	unsigned seen = 0;
	int r;

	memset(rp, 0, sizeof(*rp));
	if ((p = skip_prefix(arg, len, "TO:")) == NULL) {
		*reply = "501 5.5.4 Syntax: RCPT TO:<address>";
		return -1;
	}
	r = parse_path(p, (size_t)(end - p), utf8_ok, false, addr, addrsz, &used);
	if (r == -1) {
		*reply = "501 5.1.3 Bad recipient address syntax";
		return -1;
	}
	if (r == -2) {
		*reply = "553 5.6.7 Non-ASCII recipient address requires the SMTPUTF8 parameter";
		return -1;
	}
	p += used;
	if (p < end && *p != ' ' && *p != '\t') {
		*reply = "501 5.1.3 Bad recipient address syntax";
		return -1;
	}
	while (next_param(&p, end, &pr)) {
		unsigned bit;
		if (key_is(&pr, "NOTIFY")) {
			bit = 1;
			if (!pr.hasval || pr.vallen == 0)
				goto bad;
			const char *v = pr.val, *ve = pr.val + pr.vallen;
			while (v < ve) {
				const char *c = memchr(v, ',', (size_t)(ve - v));
				size_t n = c ? (size_t)(c - v) : (size_t)(ve - v);
				if (n == 5 && !ascii_strncasecmp(v, "NEVER", 5)) rp->notify |= DSN_NOTIFY_NEVER;
				else if (n == 7 && !ascii_strncasecmp(v, "SUCCESS", 7)) rp->notify |= DSN_NOTIFY_SUCCESS;
				else if (n == 7 && !ascii_strncasecmp(v, "FAILURE", 7)) rp->notify |= DSN_NOTIFY_FAILURE;
				else if (n == 5 && !ascii_strncasecmp(v, "DELAY", 5)) rp->notify |= DSN_NOTIFY_DELAY;
				else goto bad;
				v += n + (c ? 1 : 0);
				if (c && v == ve)
					goto bad;
			}
			if ((rp->notify & DSN_NOTIFY_NEVER) && rp->notify != DSN_NOTIFY_NEVER)
				goto bad;
		} else if (key_is(&pr, "ORCPT")) {
			bit = 2;
			const char *semi = pr.hasval ? memchr(pr.val, ';', pr.vallen) : NULL;
			if (semi == NULL || semi == pr.val || pr.vallen > SMTP_XTEXT_MAX ||
			    (size_t)(semi - pr.val) + 1 >= pr.vallen)
				goto bad;
			for (const char *t = pr.val; t < semi; t++)
				if (!is_atext((unsigned char)*t, false))
					goto bad;
			if (!smtp_valid_xtext(semi + 1, pr.vallen - (size_t)(semi + 1 - pr.val)) &&
			    !(utf8_ok && valid_utf8_xtext(semi + 1, pr.vallen - (size_t)(semi + 1 - pr.val))))
				goto bad;
			memcpy(rp->orcpt, pr.val, pr.vallen);
			rp->orcpt[pr.vallen] = '\0';
		} else {
			*reply = "555 5.5.4 Unsupported option in RCPT TO";
			return -1;
		}
		if (seen & bit) {
			*reply = "501 5.5.4 Duplicate RCPT TO parameter";
			return -1;
		}
		seen |= bit;
	}
	return 0;
bad:
	*reply = "501 5.5.4 Bad RCPT TO parameter";
	return -1;
}

const char *
smtp_addr_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : NULL;
}

bool
smtp_valid_helo(const char *arg, size_t len)
{
	if (len == 0 || len > 255)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)arg[i];
		if (c <= ' ' || c == 127)
			return false;
	}
	return true;
}

/* ---- DATA reader ---- */

enum { DS_BOL, DS_LINE, DS_CR, DS_DOT, DS_DOT_CR };

void
smtp_data_init(struct smtp_data_reader *r, size_t max_line, size_t max_size)
{
	memset(r, 0, sizeof(*r));
	r->max_line = max_line;
	r->max_size = max_size;
	r->st = DS_BOL;
	r->prev_crlf = true;
}

struct out {
	char   buf[8192];
	size_t n;
	struct smtp_data_reader *r;
	smtp_emit_fn emit;
	void  *arg;
};

static void
out_flush(struct out *o)
{
	if (o->n) {
		o->emit(o->arg, o->buf, o->n);
		o->n = 0;
	}
}

static inline void
out_c(struct out *o, char c)
{
	struct smtp_data_reader *r = o->r;
	r->size++;
	if (r->size > r->max_size) {
		r->flags |= SMTP_DATA_TOO_BIG;
		return;
	}
	if (o->n == sizeof(o->buf))
		out_flush(o);
	o->buf[o->n++] = c;
}

static inline void
line_byte(struct smtp_data_reader *r)
{
	if (++r->linelen > r->max_line)
		r->flags |= SMTP_DATA_LONG_LINE;
}

static inline void
end_line(struct out *o, bool crlf)
{
	struct smtp_data_reader *r = o->r;
	out_c(o, '\r');
	out_c(o, '\n');
	if (!crlf)
		r->flags |= SMTP_DATA_BARE_LF;
	r->prev_crlf = crlf;
	r->linelen = 0;
	r->st = DS_BOL;
}

/* an ordinary byte inside a line (not CR, not LF) */
static inline void
in_line(struct out *o, char c)
{
	if (c == '\0')
		o->r->flags |= SMTP_DATA_NUL;
	line_byte(o->r);
	out_c(o, c);
	o->r->st = DS_LINE;
}

size_t
smtp_data_feed(struct smtp_data_reader *r, const char *p, size_t len, smtp_emit_fn emit,
    void *arg, bool *done)
{
	struct out o;
	size_t i;

	o.n = 0;
	o.r = r;
	o.emit = emit;
	o.arg = arg;
	*done = false;
	for (i = 0; i < len; i++) {
		char c = p[i];
		switch (r->st) {
		case DS_BOL:
			if (c == '.' && !r->raw) {
				r->st = DS_DOT;
				line_byte(r);
			} else if (c == '\r') {
				r->st = DS_CR;
			} else if (c == '\n') {
				end_line(&o, false);
			} else
				in_line(&o, c);
			break;
		case DS_LINE:
			if (c == '\r')
				r->st = DS_CR;
			else if (c == '\n')
				end_line(&o, false);
			else
				in_line(&o, c);
			break;
		case DS_CR:
			if (c == '\n')
				end_line(&o, true);
			else if (c == '\r') {
				line_byte(r);
				out_c(&o, '\r');        /* the earlier CR was bare: content */
			} else {
				line_byte(r);
				out_c(&o, '\r');
				in_line(&o, c);
			}
			break;
		case DS_DOT:
			if (c == '\r')
				r->st = DS_DOT_CR;
			else if (c == '\n') {
				/* ".<LF>": a bare-LF line holding a dot; content */
				out_c(&o, '.');
				end_line(&o, false);
			} else
				in_line(&o, c);         /* stuffing dot dropped */
			break;
		case DS_DOT_CR:
			if (c == '\n') {
				if (r->prev_crlf) {
					out_flush(&o);
					*done = true;
					return i + 1;
				}
				/* "\n.\r\n": never the end of data (smuggling); content "." */
				out_c(&o, '.');
				end_line(&o, true);
			} else if (c == '\r') {
				/* ".\r\r": dot was stuffing, first CR bare */
				line_byte(r);
				out_c(&o, '\r');
				r->st = DS_CR;
			} else {
				line_byte(r);
				out_c(&o, '\r');
				in_line(&o, c);
			}
			break;
		}
	}
	out_flush(&o);
	return len;
}
