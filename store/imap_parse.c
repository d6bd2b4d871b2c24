/*
 * imap_parse.c - pure IMAP parsing: the command reader (line + literal
 * assembly with limits), the argument tokenizer, sequence sets, dates and
 * string quoting for responses.
 *
 * Runs in: the worker's event loop (reader, tokenizer) and pool threads
 * (quoting).  Untrusted input: all of it.  Limits: line length and whole
 * command size (the reader), parenthesis depth (IMAP_MAX_DEPTH), number of
 * arguments per list (IMAP_MAX_ARGS), ranges per set (IMAP_MAX_RANGES).
 * Nothing here does I/O or keeps state outside its arguments.
 */
#include "config.h"
#include "imap_parse.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMAP_MAX_DEPTH  16
#define IMAP_MAX_ARGS   10000
#define IMAP_MAX_RANGES 10000

/* ---- reader ---- */

enum { RD_LINE, RD_LIT, RD_SKIPLIT };

void
imap_reader_init(struct imap_reader *r, size_t max_line, size_t max_cmd)
{
	memset(r, 0, sizeof(*r));
	r->max_line = max_line;
	r->max_cmd = max_cmd;
}

void
imap_reader_free(struct imap_reader *r)
{
	buf_free(&r->cmd);
}

void
imap_reader_reset(struct imap_reader *r)
{
	buf_reset(&r->cmd);
	r->linelen = 0;
	r->litleft = 0;
	r->state = RD_LINE;
	r->cr = false;
}

/* does the line end with {n} or {n+}?  fills litsize/litplus */
static bool
ends_with_literal(struct imap_reader *r, size_t linestart)
{
	const char *p = r->cmd.data;
	size_t e = r->cmd.len, i;
	unsigned long long n = 0;

	if (e <= linestart || p[e - 1] != '}')
		return false;
	i = e - 1;
	r->litplus = false;
	if (i > linestart && p[i - 1] == '+') {
		r->litplus = true;
		i--;
	}
	size_t dend = i;
	while (i > linestart && p[i - 1] >= '0' && p[i - 1] <= '9')
		i--;
	if (i == dend || i == linestart || p[i - 1] != '{' || dend - i > 12)
		return false;
	for (size_t k = i; k < dend; k++)
		n = n * 10 + (unsigned)(p[k] - '0');
	r->litsize = (size_t)n;
	return true;
}

enum imap_rd
imap_reader_feed(struct imap_reader *r, const char *p, size_t len, size_t *used)
{
	size_t i = 0;

	while (i < len) {
		if (r->state == RD_LIT || r->state == RD_SKIPLIT) {
			size_t k = MIN(r->litleft, len - i);
			if (r->state == RD_LIT)
				buf_add(&r->cmd, p + i, k);
			i += k;
			r->litleft -= k;
			if (r->litleft == 0) {
				if (r->state == RD_SKIPLIT)
					r->skipping = true;
				r->state = RD_LINE;
				r->linelen = 0;
			}
			continue;
		}
		char c = p[i++];
		if (r->skipping) {
			if (c == '\n') {
				r->skipping = false;
				imap_reader_reset(r);
			}
			continue;
		}
		if (c == '\n') {
			size_t linestart = r->cmd.len - r->linelen;
			if (r->cmd.len > linestart && r->cmd.data[r->cmd.len - 1] == '\r') {
				r->cmd.len--;
				r->linelen--;
				r->cmd.data[r->cmd.len] = '\0';
			}
			*used = i;
			if (ends_with_literal(r, linestart)) {
				buf_add(&r->cmd, "\r\n", 2);
				r->linelen = 0;
				return IMAP_RD_LITERAL;
			}
			return IMAP_RD_CMD;
		}
		r->linelen++;
		if (r->linelen > r->max_line || r->cmd.len >= r->max_cmd) {
			imap_reader_reset(r);
			r->skipping = true;
			*used = i;
			return IMAP_RD_TOOLONG;
		}
		buf_addc(&r->cmd, c);
	}
	*used = i;
	return IMAP_RD_MORE;
}

void
imap_reader_literal(struct imap_reader *r, bool accept)
{
	if (accept && r->cmd.len + r->litsize <= r->max_cmd) {
		r->litleft = r->litsize;
		if (r->litleft > 0) {
			r->state = RD_LIT;
			buf_reserve(&r->cmd, r->litsize);
		}
		return;
	}
	/* refused: a LITERAL+ literal is coming anyway and must be skipped */
	imap_reader_reset(r);
	if (r->litplus && r->litsize > 0) {
		r->litleft = r->litsize;
		r->state = RD_SKIPLIT;
	} else if (r->litplus) {
		r->skipping = true;
	}
}

/* ---- arguments ---- */

static void
args_free1(struct imap_arg *a)
{
	free(a->owned);
	if (a->type == IA_LIST)
		imap_args_free(a->list, a->nlist);
}

void
imap_args_free(struct imap_arg *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		args_free1(&v[i]);
	free(v);
}

static bool
atom_char(char c)
{
	unsigned char u = (unsigned char)c;
	return u > 0x20 && u < 0x7f && c != '(' && c != ')' && c != '{' && c != '"';
}

static int
parse_list(const char *p, size_t len, size_t *pos, int depth, char close,
    struct imap_arg **out, size_t *n, const char **error)
{
	struct imap_arg *v = NULL;
	size_t nv = 0, i = *pos;

	while (i < len) {
		struct imap_arg a;
		char c = p[i];
		memset(&a, 0, sizeof(a));
		if (c == ' ') {
			i++;
			continue;
		}
		if (c == close) {
			i++;
			break;
		}
		if (c == ')') {
			*error = "unbalanced parenthesis";
			goto fail;
		}
		if (nv >= IMAP_MAX_ARGS) {
			*error = "too many arguments";
			goto fail;
		}
		if (c == '(') {
			if (depth >= IMAP_MAX_DEPTH) {
				*error = "parentheses nested too deep";
				goto fail;
			}
			i++;
			a.type = IA_LIST;
			if (parse_list(p, len, &i, depth + 1, ')', &a.list, &a.nlist, error) < 0)
				goto fail;
			if (i > len || p[i - 1] != ')') {
				imap_args_free(a.list, a.nlist);
				*error = "missing )";
				goto fail;
			}
		} else if (c == '"') {
			struct buf b = BUF_INIT;
			i++;
			for (;;) {
				if (i >= len || p[i] == '\r' || p[i] == '\n') {
					buf_free(&b);
					*error = "unterminated quoted string";
					goto fail;
				}
				if (p[i] == '"') {
					i++;
					break;
				}
				if (p[i] == '\\') {
					if (i + 1 >= len || (p[i + 1] != '"' && p[i + 1] != '\\')) {
						buf_free(&b);
						*error = "bad escape in quoted string";
						goto fail;
					}
					i++;
				}
				buf_addc(&b, p[i++]);
			}
			a.type = IA_STRING;
			a.len = b.len;
			a.owned = b.data ? buf_steal(&b) : xstrdup("");
			a.s = a.owned;
		} else if (c == '{' || (c == '~' && i + 1 < len && p[i + 1] == '{')) {
			unsigned long long sz = 0;
			size_t d;
			if (c == '~')
				i++;
			i++;
			for (d = 0; i < len && p[i] >= '0' && p[i] <= '9' && d < 12; i++, d++)
				sz = sz * 10 + (unsigned)(p[i] - '0');
			if (i < len && p[i] == '+')
				i++;
			if (d == 0 || i + 2 >= len + 0 || p[i] != '}' || p[i + 1] != '\r' || p[i + 2] != '\n' ||
			    sz > len - (i + 3)) {
				*error = "bad literal";
				goto fail;
			}
			i += 3;
			a.type = IA_LITERAL;
			a.s = p + i;
			a.len = (size_t)sz;
			i += (size_t)sz;
		} else if (atom_char(c)) {
			size_t st = i;
			while (i < len) {
				if (p[i] == '[') {
					/* a section: anything up to the matching ']' */
					const char *e = memchr(p + i, ']', len - i);
					if (e == NULL) {
						/* no section: '[' is an ATOM-CHAR */
						i++;
						continue;
					}
					i = (size_t)(e - p) + 1;
					continue;
				}
				if (!atom_char(p[i]))
					break;
				i++;
			}
			a.s = p + st;
			a.len = i - st;
			a.type = (a.len == 3 && ascii_prefix_ci(a.s, 3, "NIL")) ? IA_NIL : IA_ATOM;
		} else {
			*error = "invalid character";
			goto fail;
		}
		v = xreallocarray(v, nv + 1, sizeof(*v));
		v[nv++] = a;
	}
	*pos = i;
	*out = v;
	*n = nv;
	return 0;
fail:
	imap_args_free(v, nv);
	return -1;
}

int
imap_args_parse(const char *p, size_t len, struct imap_arg **out, size_t *n, const char **error)
{
	size_t pos = 0;

	*out = NULL;
	*n = 0;
	*error = NULL;
	if (parse_list(p, len, &pos, 0, '\0', out, n, error) < 0)
		return -1;
	return 0;
}

char *
imap_arg_str(const struct imap_arg *a)
{
	if (a->type == IA_LIST)
		return NULL;
	if (a->type == IA_NIL)
		return xstrdup("NIL");
	return xstrndup(a->s, a->len);
}

bool
imap_arg_is(const struct imap_arg *a, const char *atom)
{
	size_t l = strlen(atom);
	return (a->type == IA_ATOM || a->type == IA_NIL) && a->len == l && ascii_prefix_ci(a->s, l, atom);
}

/* ---- sequence sets ---- */

static bool
seqnum(const char *p, size_t len, size_t *i, uint32_t *out)
{
	unsigned long long v = 0;
	size_t d = 0;

	if (*i < len && p[*i] == '*') {
		(*i)++;
		*out = UINT32_MAX;
		return true;
	}
	while (*i < len && p[*i] >= '0' && p[*i] <= '9' && d < 11) {
		v = v * 10 + (unsigned)(p[*i] - '0');
		(*i)++;
		d++;
	}
	if (d == 0 || v == 0 || v > UINT32_MAX)
		return false;
	/* UINT32_MAX stands for '*': 4294967295 (a valid nz-number) becomes
	 * the one below it, which no UID reaches in practice */
	*out = v == UINT32_MAX ? UINT32_MAX - 1 : (uint32_t)v;
	return true;
}

bool
imap_seqset_parse(const char *p, size_t len, struct imap_seqset *s)
{
	size_t i = 0;

	memset(s, 0, sizeof(*s));
	if (len == 0)
		return false;
	for (;;) {
		struct imap_range r;
		if (!seqnum(p, len, &i, &r.lo))
			goto fail;
		r.hi = r.lo;
		if (i < len && p[i] == ':') {
			i++;
			if (!seqnum(p, len, &i, &r.hi))
				goto fail;
		}
		if (s->n >= IMAP_MAX_RANGES)
			goto fail;
		s->r = xreallocarray(s->r, s->n + 1, sizeof(*s->r));
		s->r[s->n++] = r;
		if (i == len)
			return true;
		if (p[i] != ',')
			goto fail;
		i++;
	}
fail:
	imap_seqset_free(s);
	return false;
}

void
imap_seqset_free(struct imap_seqset *s)
{
	free(s->r);
	s->r = NULL;
	s->n = 0;
}

bool
imap_seqset_has(const struct imap_seqset *s, uint32_t v, uint32_t star)
{
	for (size_t i = 0; i < s->n; i++) {
		uint32_t lo = s->r[i].lo == UINT32_MAX ? star : s->r[i].lo;
		uint32_t hi = s->r[i].hi == UINT32_MAX ? star : s->r[i].hi;
		if (lo > hi) {
			uint32_t t = lo;
			lo = hi;
			hi = t;
		}
		if (v >= lo && v <= hi)
			return true;
	}
	return false;
}

/* ---- dates ---- */

static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
	"Sep", "Oct", "Nov", "Dec" };

static bool
num(const char *p, size_t len, size_t *i, int mind, int maxd, int *out)
{
	int v = 0, d = 0;
	while (*i < len && p[*i] >= '0' && p[*i] <= '9' && d < maxd) {
		v = v * 10 + (p[*i] - '0');
		(*i)++;
		d++;
	}
	*out = v;
	return d >= mind;
}

static bool
date_part(const char *p, size_t len, size_t *i, struct tm *tm)
{
	int d, y, m;

	if (*i < len && p[*i] == ' ')
		(*i)++;
	if (!num(p, len, i, 1, 2, &d) || *i + 5 > len || p[*i] != '-')
		return false;
	(*i)++;
	for (m = 0; m < 12; m++)
		if (ascii_strncasecmp(p + *i, months[m], 3) == 0)
			break;
	if (m == 12)
		return false;
	*i += 3;
	if (*i >= len || p[*i] != '-')
		return false;
	(*i)++;
	if (!num(p, len, i, 4, 4, &y) || d < 1 || d > 31 || y < 1900)
		return false;
	memset(tm, 0, sizeof(*tm));
	tm->tm_mday = d;
	tm->tm_mon = m;
	tm->tm_year = y - 1900;
	return true;
}

bool
imap_date_parse(const char *p, size_t len, time_t *out)
{
	struct tm tm;
	size_t i = 0;

	if (!date_part(p, len, &i, &tm) || i != len)
		return false;
	*out = timegm(&tm);
	return true;
}

bool
imap_datetime_parse(const char *p, size_t len, time_t *out)
{
	struct tm tm;
	size_t i = 0;
	int h, mi, s, z;
	int sign;

	if (!date_part(p, len, &i, &tm))
		return false;
	if (i >= len || p[i++] != ' ' || !num(p, len, &i, 2, 2, &h) || i >= len || p[i++] != ':' ||
	    !num(p, len, &i, 2, 2, &mi) || i >= len || p[i++] != ':' || !num(p, len, &i, 2, 2, &s) ||
	    i >= len || p[i++] != ' ' || i >= len || (p[i] != '+' && p[i] != '-'))
		return false;
	sign = p[i++] == '-' ? -1 : 1;
	if (!num(p, len, &i, 4, 4, &z) || i != len || h > 23 || mi > 59 || s > 60)
		return false;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = s;
	*out = timegm(&tm) - sign * ((z / 100) * 3600 + (z % 100) * 60);
	return true;
}

void
imap_datetime_fmt(time_t t, char *out, size_t outsz)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	snprintf(out, outsz, "%02d-%s-%04d %02d:%02d:%02d +0000", tm.tm_mday, months[tm.tm_mon],
	    tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- response strings ---- */

void
imap_add_string(struct buf *b, const char *s, size_t len)
{
	bool quote = len < 1024;

	for (size_t i = 0; i < len && quote; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == 0 || c == '\r' || c == '\n' || c >= 0x80)
			quote = false;
	}
	if (!quote) {
		buf_printf(b, "{%zu}\r\n", len);
		buf_add(b, s, len);
		return;
	}
	buf_addc(b, '"');
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '"' || s[i] == '\\')
			buf_addc(b, '\\');
		buf_addc(b, s[i]);
	}
	buf_addc(b, '"');
}

void
imap_add_nstring(struct buf *b, const char *s)
{
	if (s == NULL)
		buf_adds(b, "NIL");
	else
		imap_add_string(b, s, strlen(s));
}
