/*
 * mime.c - parse a message once (GMime 3) into the tree the filters share:
 * decoded headers, UTF-8 text parts (HTML rendered to text), attachments
 * and URLs.  See mime.h.
 *
 * Runs in: pool threads of the worker and in the CLI.  Untrusted input:
 * the whole message.  Limits: MIME depth, part count, decoded text bytes,
 * header bytes, URL count and URL length (2 KB); what exceeds them is
 * skipped and flagged, never an error.  GMime builds its own tree
 * recursively, so a message whose raw text names more multipart or
 * message/rfc822 types than max_parts is not handed to GMime's MIME parser
 * at all (headers and the raw body as one text part, MIME_F_PARTS).
 *
 * Thread safety: one GMimeParser per call, no globals besides GMime's own
 * (initialised once by mime_init()), the result is immutable.
 */
#include "config.h"
#include "mime.h"
#include "buf.h"
#include "util.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wshadow"
#include <gmime/gmime.h>
#pragma GCC diagnostic pop

#define MIME_URL_MAX    2048            /* bytes of one URL */

struct mime_msg {
	struct mime_header     *hdr;
	size_t                  nhdr, hdrcap;
	struct mime_text       *text;
	size_t                  ntext, textcap;
	struct mime_attachment *att;
	size_t                  natt, attcap;
	struct mime_url        *url;
	size_t                  nurl, urlcap;
	char                  **uri;            /* raw URIs for uri rules */
	bool                   *uriparsed;      /* ... found in text only */
	size_t                  nuri, uricap;
	unsigned                flags;
	unsigned                parts;
	unsigned                depth;
	size_t                  decoded;
	size_t                  attkept;        /* attachment bytes kept (data) */
	struct mime_limits      lim;
};

#define GROW(arr, n, cap) do { \
	if ((n) == (cap)) { \
		(cap) = (cap) ? (cap) * 2 : 8; \
		(arr) = xreallocarray((arr), (cap), sizeof(*(arr))); \
	} } while (0)

void
mime_init(void)
{
	g_mime_init();
}

/* ---- URLs ---- */

static bool
host_char(unsigned char c)
{
	return isalnum(c) || c == '-' || c == '.' || c == '_' || c >= 0x80;
}

char *
mime_url_normalise(const char *s, size_t len, char **hostp)
{
	struct buf b = BUF_INIT;
	size_t i = 0, hs, he, ae, pe;
	const char *scheme = NULL;

	*hostp = NULL;
	if (len > MIME_URL_MAX)
		len = MIME_URL_MAX;
	if (len >= 7 && ascii_prefix_ci(s, len, "http://")) {
		scheme = "http://";
		i = 7;
	} else if (len >= 8 && ascii_prefix_ci(s, len, "https://")) {
		scheme = "https://";
		i = 8;
	} else if (len >= 6 && ascii_prefix_ci(s, len, "ftp://")) {
		scheme = "ftp://";
		i = 6;
	} else if (len >= 4 && ascii_prefix_ci(s, len, "www.")) {
		scheme = "http://";
		i = 0;
	} else
		return NULL;
	/* authority: [userinfo@]host[:port], up to / ? # */
	for (ae = i; ae < len && s[ae] != '/' && s[ae] != '?' && s[ae] != '#' &&
	    s[ae] != '\\'; ae++)
		;
	hs = i;
	for (size_t k = i; k < ae; k++)
		if (s[k] == '@')
			hs = k + 1;
	for (he = hs; he < ae && s[he] != ':'; he++)
		if (!host_char((unsigned char)s[he]))
			return NULL;
	pe = he;
	while (he > hs && s[he - 1] == '.')
		he--;
	if (he == hs)
		return NULL;
	buf_adds(&b, scheme);
	for (size_t k = hs; k < he; k++)
		buf_addc(&b, (char)tolower((unsigned char)s[k]));
	*hostp = xstrndup(b.data + strlen(scheme), b.len - strlen(scheme));
	/* port (digits only) and the rest as written */
	for (size_t k = pe; k < ae; k++)
		if (k > pe && !isdigit((unsigned char)s[k])) {
			free(*hostp);
			*hostp = NULL;
			buf_free(&b);
			return NULL;
		}
	buf_add(&b, s + pe, ae - pe);
	if (ae < len)
		buf_add(&b, s + ae, len - ae);
	else
		buf_addc(&b, '/');
	return buf_steal(&b);
}

static void
add_url(struct mime_msg *m, const char *s, size_t len)
{
	char *u, *host;

	/* trim blanks and trailing punctuation */
	while (len && isspace((unsigned char)*s))
		s++, len--;
	while (len && strchr(".,;:!?)]}'\"", s[len - 1]))
		len--;
	if ((u = mime_url_normalise(s, len, &host)) == NULL)
		return;
	for (size_t i = 0; i < m->nurl; i++)
		if (strcmp(m->url[i].url, u) == 0) {
			free(u);
			free(host);
			return;
		}
	if (m->nurl >= m->lim.max_urls) {
		m->flags |= MIME_F_URLS;
		free(u);
		free(host);
		return;
	}
	GROW(m->url, m->nurl, m->urlcap);
	m->url[m->nurl].url = u;
	m->url[m->nurl].host = host;
	m->nurl++;
}

/* a raw URI (as SpamAssassin records it), prefix prepended */
static void
add_uri(struct mime_msg *m, const char *prefix, const char *s, size_t len,
    bool parsed)
{
	struct buf b = BUF_INIT;
	char *u;

	if (len > MIME_URL_MAX)
		len = MIME_URL_MAX;
	buf_adds(&b, prefix);
	buf_add(&b, s, len);
	u = buf_steal(&b);
	for (size_t i = 0; i < m->nuri; i++)
		if (strcmp(m->uri[i], u) == 0) {
			if (!parsed)
				m->uriparsed[i] = false;
			free(u);
			return;
		}
	if (m->nuri >= m->lim.max_urls) {
		m->flags |= MIME_F_URLS;
		free(u);
		return;
	}
	if (m->nuri == m->uricap) {
		m->uricap = m->uricap ? m->uricap * 2 : 8;
		m->uri = xreallocarray(m->uri, m->uricap, sizeof(*m->uri));
		m->uriparsed = xreallocarray(m->uriparsed, m->uricap, sizeof(*m->uriparsed));
	}
	m->uri[m->nuri] = u;
	m->uriparsed[m->nuri] = parsed;
	m->nuri++;
}

static void
href_cb(void *arg, const char *s, size_t len)
{
	add_url(arg, s, len);
}

static void
sa_uri_cb(void *arg, const char *s, size_t len)
{
	struct mime_msg *m = arg;

	/* HTML.pm canon_uri(): leading/trailing whitespace (and U+00A0)
	 * removed, the rest as found */
	for (;;) {
		if (len && isspace((unsigned char)*s))
			s++, len--;
		else if (len >= 2 && (unsigned char)s[0] == 0xc2 && (unsigned char)s[1] == 0xa0)
			s += 2, len -= 2;
		else
			break;
	}
	for (;;) {
		if (len && isspace((unsigned char)s[len - 1]))
			len--;
		else if (len >= 2 && (unsigned char)s[len - 2] == 0xc2 &&
		    (unsigned char)s[len - 1] == 0xa0)
			len -= 2;
		else
			break;
	}
	if (len)
		add_uri(m, "", s, len, false);
}

/* thunderbird's end delimiters (SpamAssassin's $tbirdenddelim) */
static bool
tbird_end(unsigned char c)
{
	return c <= ' ' || strchr("><\"`}]{[|", c) != NULL || c == 0x1b || c == 0x7f;
}

/* e-mail addresses written in text, as "mailto:" URIs */
static void
scan_emails(struct mime_msg *m, const char *t, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		size_t s, e, dot;

		if (t[i] != '@')
			continue;
		for (s = i; s > 0 && i - s < 251; s--) {
			unsigned char c = (unsigned char)t[s - 1];
			if (tbird_end(c) || c == ',' || c == '(' || c == '\'' ||
			    c >= 0x80 || c == '@')
				break;
		}
		for (e = i + 1; e < len && e - i < 251; e++) {
			unsigned char c = (unsigned char)t[e];
			if (tbird_end(c) || c == ',' || c == '(' || c == '\'' ||
			    c >= 0x80)
				break;
		}
		if (s == i || e == i + 1)
			continue;
		/* trailing punctuation thunderbird ignores */
		while (e > i + 1 && strchr("-~!@#^&*()_+=:;'?,.", t[e - 1]))
			e--;
		/* a URL with a scheme is scan_urls()'s (the regex tries that
		 * alternative first) */
		if (ascii_prefix_ci(t + s, e - s, "http://") ||
		    ascii_prefix_ci(t + s, e - s, "https://") ||
		    ascii_prefix_ci(t + s, e - s, "ftp://")) {
			i = e;
			continue;
		}
		/* _process_text_uri_list(): "x/y@z" is an http:// URI */
		{
			const char *sl = memchr(t + s, '/', i - s);
			if (sl && (size_t)(sl - (t + s)) + 1 < i - s) {
				add_uri(m, "http://", t + s, e - s, true);
				i = e;
				continue;
			}
		}
		/* an address needs a dot after the @ */
		dot = 0;
		for (size_t k = i + 2; k + 1 < e; k++)
			if (t[k] == '.')
				dot = k;
		if (dot == 0)
			continue;
		if (ascii_prefix_ci(t + s, i - s, "mailto:"))
			add_uri(m, "", t + s, e - s, true);
		else
			add_uri(m, "mailto:", t + s, e - s, true);
		i = e;
	}
}

/* URLs written as text: scheme:// or www. at a word start */
static void
scan_urls(struct mime_msg *m, const char *t, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		char c = t[i];
		size_t e;

		if (c != 'h' && c != 'H' && c != 'w' && c != 'W' && c != 'f' && c != 'F')
			continue;
		if (i > 0 && (isalnum((unsigned char)t[i - 1]) || t[i - 1] == '.' ||
		    t[i - 1] == '/'))
			continue;
		if (!(ascii_prefix_ci(t + i, len - i, "http://") ||
		    ascii_prefix_ci(t + i, len - i, "https://") ||
		    ascii_prefix_ci(t + i, len - i, "ftp://") ||
		    ascii_prefix_ci(t + i, len - i, "www.")))
			continue;
		for (e = i; e < len && e - i < MIME_URL_MAX; e++) {
			unsigned char d = (unsigned char)t[e];
			if (d <= ' ' || d == '<' || d == '>' || d == '"' || d == '`' ||
			    d == '{' || d == '}' || d == '|' || d == '^' || d == 0x7f)
				break;
		}
		add_url(m, t + i, e - i);
		{
			/* the raw URI as SpamAssassin's text parser takes it */
			size_t r;
			const char *cp;
			for (r = i; r < len && r - i < MIME_URL_MAX &&
			    !tbird_end((unsigned char)t[r]) &&
			    !((unsigned char)t[r] == 0xc2 && r + 1 < len &&
			    (unsigned char)t[r + 1] == 0xa0); r++)
				;
			/* ")" ends it when no "(" comes before */
			cp = memchr(t + i, ')', r - i);
			if (cp && memchr(t + i, '(', (size_t)(cp - (t + i))) == NULL)
				r = (size_t)(cp - t);
			while (r > i && strchr("-~!@#^&*()_+=:;'?,.", t[r - 1]))
				r--;
			if (r > i + 4)
				add_uri(m, ascii_prefix_ci(t + i, r - i, "www.") ?
				    "http://" : "", t + i, r - i, true);
		}
		i = e;
	}
	scan_emails(m, t, len);
}

/* ---- HTML to text ---- */

static const struct { const char *name; unsigned cp; } html_ents[] = {
	{ "amp", '&' }, { "lt", '<' }, { "gt", '>' }, { "quot", '"' },
	{ "apos", '\'' }, { "nbsp", ' ' }, { "copy", 0xa9 }, { "reg", 0xae },
	{ "euro", 0x20ac }, { "pound", 0xa3 }, { "yen", 0xa5 }, { "cent", 0xa2 },
	{ "hellip", 0x2026 }, { "mdash", 0x2014 }, { "ndash", 0x2013 },
	{ "lsquo", 0x2018 }, { "rsquo", 0x2019 }, { "ldquo", 0x201c },
	{ "rdquo", 0x201d }, { "bull", 0x2022 }, { "trade", 0x2122 },
	{ "middot", 0xb7 }, { "laquo", 0xab }, { "raquo", 0xbb }, { "shy", 0xad },
	{ "eacute", 0xe9 }, { "egrave", 0xe8 }, { "agrave", 0xe0 },
	{ "aacute", 0xe1 }, { "ccedil", 0xe7 }, { "uuml", 0xfc }, { "ouml", 0xf6 },
	{ "auml", 0xe4 }, { "szlig", 0xdf }, { "ntilde", 0xf1 }, { "iacute", 0xed },
	{ "oacute", 0xf3 }, { "uacute", 0xfa }, { "times", 0xd7 }, { "deg", 0xb0 },
	{ "zwnj", 0x200c }, { "zwj", 0x200d },
};

static void
put_utf8(struct buf *b, unsigned cp)
{
	char u[4];

	if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		cp = 0xfffd;
	if (cp < 0x80) {
		buf_addc(b, (char)cp);
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3f));
		buf_add(b, u, 2);
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		buf_add(b, u, 3);
	} else {
		u[0] = (char)(0xf0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		buf_add(b, u, 4);
	}
}

/* at s[0] == '&': decode one entity into b; returns bytes consumed */
static size_t
html_entity(const char *s, size_t len, struct buf *b)
{
	size_t i = 1;

	if (i < len && s[i] == '#') {
		unsigned long cp = 0;
		bool hex = false, any = false;

		i++;
		if (i < len && (s[i] == 'x' || s[i] == 'X'))
			hex = true, i++;
		for (; i < len && i < 12; i++) {
			int c = (unsigned char)s[i];
			if (hex && isxdigit(c))
				cp = cp * 16 + (unsigned long)(isdigit(c) ? c - '0' : (tolower(c) - 'a' + 10));
			else if (!hex && isdigit(c))
				cp = cp * 10 + (unsigned long)(c - '0');
			else
				break;
			any = true;
		}
		if (!any) {
			buf_addc(b, '&');
			return 1;
		}
		if (i < len && s[i] == ';')
			i++;
		put_utf8(b, cp > 0x10ffff ? 0xfffd : (unsigned)cp);
		return i;
	}
	for (size_t k = 0; k < ARRAY_SIZE(html_ents); k++) {
		size_t n = strlen(html_ents[k].name);
		if (len >= 1 + n && strncmp(s + 1, html_ents[k].name, n) == 0 &&
		    (len == 1 + n || !isalnum((unsigned char)s[1 + n]))) {
			put_utf8(b, html_ents[k].cp);
			i = 1 + n;
			if (i < len && s[i] == ';')
				i++;
			return i;
		}
	}
	buf_addc(b, '&');
	return 1;
}

static bool
tag_is(const char *name, size_t n, const char *want)
{
	return strlen(want) == n && ascii_strncasecmp(name, want, n) == 0;
}

/* find "</NAME" (case-insensitive) from i; returns its index or len */
static size_t
find_close(const char *s, size_t len, size_t i, const char *name)
{
	size_t n = strlen(name);

	for (; i + 2 + n <= len; i++)
		if (s[i] == '<' && s[i + 1] == '/' && ascii_strncasecmp(s + i + 2, name, n) == 0)
			return i;
	return len;
}

/* whitespace from text or tags, as HTML.pm's display_text() leaves it for
 * the body rules: text whitespace is one space; a tag adds ' ', '\n' or
 * 'P' (a paragraph, "\n\n").  Only whether a run holds two newlines (a
 * paragraph break for the body rules) matters, so runs are kept short. */
static void
space(struct buf *b, char c)
{
	size_t nl = 0;

	if (c == 'P') {
		space(b, '\n');
		space(b, '\n');
		return;
	}
	if (b->len == 0) {
		if (c == '\n')
			buf_addc(b, '\n');
		return;
	}
	for (size_t k = b->len; k > 0 && (b->data[k - 1] == ' ' || b->data[k - 1] == '\n'); k--)
		if (b->data[k - 1] == '\n')
			nl++;
	if (c == ' ') {
		if (b->data[b->len - 1] != ' ' && b->data[b->len - 1] != '\n')
			buf_addc(b, ' ');
		return;
	}
	if (nl >= 2)
		return;
	if (b->data[b->len - 1] == ' ')
		b->data[b->len - 1] = '\n';
	else
		buf_addc(b, '\n');
}

/* ---- HTML.pm target_uri(): RFC 3986 resolution against <base href> ---- */

struct uparts {
	const char *p[5];       /* scheme, authority, path, query, fragment */
	size_t l[5];
	bool def[5];
};

static void
uri_split(const char *s, size_t len, struct uparts *u)
{
	size_t i = 0, k;

	memset(u, 0, sizeof(*u));
	/* ^(?:([^:/?#]+):)? */
	for (k = 0; k < len && !strchr(":/?#", s[k]); k++)
		;
	if (k > 0 && k < len && s[k] == ':') {
		u->p[0] = s, u->l[0] = k, u->def[0] = true;
		i = k + 1;
	}
	/* (?://([^/?#]*))? */
	if (i + 1 < len && s[i] == '/' && s[i + 1] == '/') {
		for (k = i + 2; k < len && !strchr("/?#", s[k]); k++)
			;
		u->p[1] = s + i + 2, u->l[1] = k - i - 2, u->def[1] = true;
		i = k;
	}
	/* ([^?#]*) */
	for (k = i; k < len && s[k] != '?' && s[k] != '#'; k++)
		;
	u->p[2] = s + i, u->l[2] = k - i, u->def[2] = true;
	i = k;
	if (i < len && s[i] == '?') {
		for (k = i + 1; k < len && s[k] != '#'; k++)
			;
		u->p[3] = s + i + 1, u->l[3] = k - i - 1, u->def[3] = true;
		i = k;
	}
	if (i < len && s[i] == '#')
		u->p[4] = s + i + 1, u->l[4] = len - i - 1, u->def[4] = true;
}

/* _remove_dot_segments(), appended to out */
static void
dot_segments(struct buf *out, const char *in, size_t len)
{
	char *d = xmalloc(len + 2);
	size_t pos = 0, dl = 0, ol0 = out->len;

	/* s@^(?:\.\.?/)@/@ */
	if (len >= 2 && in[0] == '.' && in[1] == '/')
		d[dl++] = '/', in += 2, len -= 2;
	else if (len >= 3 && in[0] == '.' && in[1] == '.' && in[2] == '/')
		d[dl++] = '/', in += 3, len -= 3;
	memcpy(d + dl, in, len);
	dl += len;
	/* while ($input): "" and "0" end it */
	while (pos < dl && !(dl - pos == 1 && d[pos] == '0')) {
		const char *q = d + pos;
		size_t ql = dl - pos;
		if (ql >= 2 && q[0] == '/' && q[1] == '.' && (ql == 2 || q[2] == '/')) {
			/* "/./x" -> "/x", "/." -> "/" */
			if (ql == 2) {
				pos += 1;
				d[pos] = '/';
			} else
				pos += 2;
			continue;
		}
		if (ql >= 3 && q[0] == '/' && q[1] == '.' && q[2] == '.' &&
		    (ql == 3 || q[3] == '/')) {
			/* "/../x" -> "/x", "/.." -> "/" */
			if (ql == 3) {
				pos += 2;
				d[pos] = '/';
			} else
				pos += 3;
			/* $output =~ s@/?[^/]*$@@ */
			while (out->len > ol0 && out->data[out->len - 1] != '/')
				out->len--;
			if (out->len > ol0)
				out->len--;
			continue;
		}
		size_t k = q[0] == '/' ? 1 : 0;
		while (k < ql && q[k] != '/')
			k++;
		buf_add(out, q, k);
		pos += k;
	}
	free(d);
}

/* target_uri(base, r) into out (reset first) */
static void
target_uri(struct buf *out, const char *base, size_t bl, const char *r, size_t rl)
{
	struct uparts R, B, T;

	buf_reset(out);
	uri_split(r, rl, &R);
	uri_split(base, bl, &B);
	memset(&T, 0, sizeof(T));
	if (R.def[0] && B.def[0] && R.l[0] == B.l[0] && memcmp(R.p[0], B.p[0], R.l[0]) == 0)
		R.def[0] = false;
	struct buf path = BUF_INIT;
	if (R.def[0]) {
		T.p[0] = R.p[0], T.l[0] = R.l[0], T.def[0] = true;
		T.p[1] = R.p[1], T.l[1] = R.l[1], T.def[1] = R.def[1];
		dot_segments(&path, R.p[2], R.l[2]);
		T.p[3] = R.p[3], T.l[3] = R.l[3], T.def[3] = R.def[3];
	} else {
		if (R.def[1]) {
			T.p[1] = R.p[1], T.l[1] = R.l[1], T.def[1] = true;
			dot_segments(&path, R.p[2], R.l[2]);
			T.p[3] = R.p[3], T.l[3] = R.l[3], T.def[3] = R.def[3];
		} else {
			if (R.l[2] == 0) {
				buf_add(&path, B.p[2], B.l[2]);
				if (R.def[3])
					T.p[3] = R.p[3], T.l[3] = R.l[3], T.def[3] = true;
				else
					T.p[3] = B.p[3], T.l[3] = B.l[3], T.def[3] = B.def[3];
			} else {
				if (R.p[2][0] == '/')
					dot_segments(&path, R.p[2], R.l[2]);
				else {
					/* _merge_uri() */
					struct buf mg = BUF_INIT;
					bool bp_true = B.l[2] > 0 && !(B.l[2] == 1 && B.p[2][0] == '0');
					if (B.def[1] && !bp_true) {
						buf_addc(&mg, '/');
					} else if (memchr(B.p[2], '/', B.l[2])) {
						size_t k = B.l[2];
						while (k > 0 && B.p[2][k - 1] != '/')
							k--;
						buf_add(&mg, B.p[2], k);
					}
					buf_add(&mg, R.p[2], R.l[2]);
					dot_segments(&path, mg.data ? mg.data : "", mg.len);
					buf_free(&mg);
				}
				T.p[3] = R.p[3], T.l[3] = R.l[3], T.def[3] = R.def[3];
			}
			T.p[1] = B.p[1], T.l[1] = B.l[1], T.def[1] = B.def[1];
		}
		T.p[0] = B.p[0], T.l[0] = B.l[0], T.def[0] = B.def[0];
	}
	T.p[4] = R.p[4], T.l[4] = R.l[4], T.def[4] = R.def[4];
	if (T.def[0] && T.l[0]) {
		buf_add(out, T.p[0], T.l[0]);
		buf_addc(out, ':');
	} else if (T.def[1]) {
		size_t k = 0;
		if (T.l[1] >= 3 && ascii_strncasecmp(T.p[1], "www", 3) == 0)
			k = 3;
		else if (T.l[1] >= 3 && ascii_strncasecmp(T.p[1], "ftp", 3) == 0)
			k = 3;
		if (k) {
			while (k < T.l[1] && isdigit((unsigned char)T.p[1][k]))
				k++;
			if (k < T.l[1] && T.p[1][k] == '.')
				buf_adds(out, (T.p[1][0] | 0x20) == 'w' ? "http:" : "ftp:");
		}
	}
	if (T.def[1]) {
		buf_adds(out, "//");
		buf_add(out, T.p[1], T.l[1]);
	}
	buf_add(out, path.data ? path.data : "", path.len);
	if (T.def[3]) {
		buf_addc(out, '?');
		buf_add(out, T.p[3], T.l[3]);
	}
	if (T.def[4]) {
		buf_addc(out, '#');
		buf_add(out, T.p[4], T.l[4]);
	}
	buf_free(&path);
}

/* HTML.pm push_uri() / canon_uri(), and <base href> */
static void
sa_push_uri(struct buf *base, bool is_base, const char *s, size_t len,
    void (*uri)(void *, const char *, size_t), void *arg)
{
	struct buf t = BUF_INIT;

	for (;;) {
		if (len && isspace((unsigned char)*s))
			s++, len--;
		else if (len >= 2 && (unsigned char)s[0] == 0xc2 && (unsigned char)s[1] == 0xa0)
			s += 2, len -= 2;
		else
			break;
	}
	for (;;) {
		if (len && isspace((unsigned char)s[len - 1]))
			len--;
		else if (len >= 2 && (unsigned char)s[len - 2] == 0xc2 &&
		    (unsigned char)s[len - 1] == 0xa0)
			len -= 2;
		else
			break;
	}
	if (len > MIME_URL_MAX)
		len = MIME_URL_MAX;
	if (len == 0)
		return;
	if (ascii_prefix_ci(s, len, "data:") || ascii_prefix_ci(s, len, "mailto:") ||
	    ascii_prefix_ci(s, len, "file:") || ascii_prefix_ci(s, len, "cid:") ||
	    ascii_prefix_ci(s, len, "tel:"))
		uri(arg, s, len);
	else {
		target_uri(&t, base->data ? base->data : "", base->len, s, len);
		if (t.len)
			uri(arg, t.data, t.len);
	}
	buf_free(&t);
	if (is_base && (ascii_prefix_ci(s, len, "http:") || ascii_prefix_ci(s, len, "https:") ||
	    ascii_prefix_ci(s, len, "ftp:"))) {
		/* s@^([a-z]+:/{0,2}[^/]+/.*?)[^/\.]+\.[^/\.]{2,4}$@$1@i */
		size_t k = 0, e = len, dot, ls;
		while (k < len && s[k] != ':')
			k++;
		k++;
		for (size_t n = 0; n < 2 && k < len && s[k] == '/'; n++)
			k++;
		while (k < len && s[k] != '/')
			k++;
		if (k < len) {
			/* the last segment: NAME.EXT with no / or . in NAME
			 * beyond the last dot, EXT 2-4 chars */
			for (ls = len; ls > k + 1 && s[ls - 1] != '/'; ls--)
				;
			const char *ld = NULL;
			for (dot = ls; dot < len; dot++)
				if (s[dot] == '.')
					ld = s + dot;
			if (ld && ld > s + ls && len - (size_t)(ld - s) - 1 >= 2 &&
			    len - (size_t)(ld - s) - 1 <= 4 &&
			    memchr(s + ls, '.', (size_t)(ld - (s + ls))) == NULL)
				e = ls;
		}
		buf_reset(base);
		buf_add(base, s, e);
		if (base->len == 0 || base->data[base->len - 1] != '/')
			buf_addc(base, '/');
	}
}

/* the attributes SpamAssassin's HTML.pm html_uri() takes as URIs */
static bool
sa_uri_attr(const char *tag, size_t tl, const char *at, size_t al)
{
	static const struct { const char *tags, *attr; } t[] = {
		{ " body table tr td ", "background" },
		{ " a area link base ", "href" },
		{ " a area link ", "data-saferedirecturl" },
		{ " img frame iframe embed script bgsound ", "src" },
		{ " form ", "action" },
	};
	char name[16];

	if (tl == 0 || tl + 2 >= sizeof(name))
		return false;
	name[0] = ' ';
	for (size_t i = 0; i < tl; i++)
		name[i + 1] = (char)tolower((unsigned char)tag[i]);
	name[tl + 1] = ' ';
	name[tl + 2] = '\0';
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strlen(t[i].attr) == al && ascii_strncasecmp(at, t[i].attr, al) == 0 &&
		    strstr(t[i].tags, name) != NULL)
			return true;
	return false;
}

static char *
html_to_text(const char *s, size_t len, size_t *outlen,
    void (*href)(void *, const char *, size_t),
    void (*uri)(void *, const char *, size_t), void *arg);

char *
mime_html_to_text(const char *s, size_t len, size_t *outlen,
    void (*href)(void *, const char *, size_t), void *arg)
{
	return html_to_text(s, len, outlen, href, NULL, arg);
}

static char *
html_to_text(const char *s, size_t len, size_t *outlen,
    void (*href)(void *, const char *, size_t),
    void (*uri)(void *, const char *, size_t), void *arg)
{
	struct buf b = BUF_INIT, base = BUF_INIT;
	size_t i = 0;

	buf_reserve(&b, len / 2 + 16);
	while (i < len) {
		unsigned char c = (unsigned char)s[i];

		if (c == '&') {
			i += html_entity(s + i, len - i, &b);
			continue;
		}
		if (isspace(c)) {
			space(&b, ' ');
			i++;
			continue;
		}
		if (c != '<') {
			buf_addc(&b, (char)c);
			i++;
			continue;
		}
		/* comment, doctype, CDATA */
		if (i + 4 <= len && strncmp(s + i, "<!--", 4) == 0) {
			const char *e = memmem(s + i + 4, len - i - 4, "-->", 3);
			i = e ? (size_t)(e - s) + 3 : len;
			continue;
		}
		size_t j = i + 1, ns, ne;
		bool closing = false;
		if (j < len && s[j] == '/')
			closing = true, j++;
		ns = j;
		while (j < len && (isalnum((unsigned char)s[j]) || s[j] == '!' || s[j] == '?'))
			j++;
		ne = j;
		if (ne == ns) {                 /* "a < b": not a tag */
			buf_addc(&b, '<');
			i++;
			continue;
		}
		/* attributes up to '>' (quotes honoured) */
		while (j < len && s[j] != '>') {
			size_t an, ae, vs, ve;
			while (j < len && (isspace((unsigned char)s[j]) || s[j] == '/'))
				j++;
			an = j;
			while (j < len && !isspace((unsigned char)s[j]) && s[j] != '=' &&
			    s[j] != '>' && s[j] != '/')
				j++;
			ae = j;
			if (ae == an) {
				if (j < len && s[j] != '>')
					j++;
				continue;
			}
			while (j < len && isspace((unsigned char)s[j]))
				j++;
			if (j >= len || s[j] != '=')
				continue;
			j++;
			while (j < len && isspace((unsigned char)s[j]))
				j++;
			if (j < len && (s[j] == '"' || s[j] == '\'')) {
				char q = s[j++];
				vs = j;
				while (j < len && s[j] != q)
					j++;
				ve = j;
				if (j < len)
					j++;
			} else {
				vs = j;
				while (j < len && !isspace((unsigned char)s[j]) && s[j] != '>')
					j++;
				ve = j;
			}
			bool want_url = href && !closing && ve > vs &&
			    ((ae - an == 4 && ascii_strncasecmp(s + an, "href", 4) == 0) ||
			    (ae - an == 3 && ascii_strncasecmp(s + an, "src", 3) == 0) ||
			    (ae - an == 6 && ascii_strncasecmp(s + an, "action", 6) == 0));
			bool want_uri = uri && !closing &&
			    sa_uri_attr(s + ns, ne - ns, s + an, ae - an);
			if (want_url || want_uri) {
				struct buf v = BUF_INIT;
				for (size_t k = vs; k < ve; ) {
					if (s[k] == '&')
						k += html_entity(s + k, ve - k, &v);
					else
						buf_addc(&v, s[k++]);
				}
				if (want_uri)
					sa_push_uri(&base, tag_is(s + ns, ne - ns, "base"),
					    v.data ? v.data : "", v.len, uri, arg);
				if (want_url && v.len)
					href(arg, v.data, v.len);
				buf_free(&v);
			}
		}
		i = j < len ? j + 1 : len;
		const char *name = s + ns;
		size_t n = ne - ns;
		if (!closing && (tag_is(name, n, "script") || tag_is(name, n, "style"))) {
			size_t e = find_close(s, len, i, tag_is(name, n, "script") ? "script" : "style");
			const char *gt = e < len ? memchr(s + e, '>', len - e) : NULL;
			i = gt ? (size_t)(gt - s) + 1 : len;
			continue;
		}
		/* HTML.pm html_whitespace(), opening and closing tags alike */
		if (tag_is(name, n, "br") || tag_is(name, n, "div"))
			space(&b, '\n');
		else if (tag_is(name, n, "p") || tag_is(name, n, "hr") ||
		    tag_is(name, n, "blockquote") || tag_is(name, n, "pre") ||
		    tag_is(name, n, "listing") || tag_is(name, n, "plaintext") ||
		    tag_is(name, n, "xmp") || tag_is(name, n, "title"))
			space(&b, 'P');
		else if (tag_is(name, n, "li") || tag_is(name, n, "td") ||
		    tag_is(name, n, "th") || tag_is(name, n, "dd") ||
		    tag_is(name, n, "dt") || tag_is(name, n, "embed") ||
		    (n == 2 && (name[0] == 'h' || name[0] == 'H') && name[1] >= '1' && name[1] <= '6'))
			space(&b, ' ');
	}
	buf_free(&base);
	while (b.len && (b.data[b.len - 1] == ' ' || b.data[b.len - 1] == '\n'))
		b.data[--b.len] = '\0';
	if (b.data == NULL)
		buf_addc(&b, '\0'), b.len = 0;
	*outlen = b.len;
	return buf_steal(&b);
}

/* ---- charsets ---- */

static char *
latin1_to_utf8(const char *s, size_t len, size_t *outlen)
{
	struct buf b = BUF_INIT;

	buf_reserve(&b, len + 1);
	for (size_t i = 0; i < len; i++)
		put_utf8(&b, (unsigned char)s[i] ? (unsigned char)s[i] : ' ');
	if (b.data == NULL)
		buf_addc(&b, '\0'), b.len = 0;
	*outlen = b.len;
	return buf_steal(&b);
}

/*
 * windows-1252 to UTF-8 by table, as iconv's CP1252 converts it (the
 * commonest 8-bit charset, and what ISO-8859-1 and undeclared 8-bit text
 * are read as): no iconv_open() per part.  NULL when a byte CP1252 leaves
 * undefined occurs, where iconv fails and the caller falls back.  Stops at
 * a NUL byte, as the iconv path's copy does.
 */
static char *
cp1252_to_utf8(const char *s, size_t len, size_t *outlen)
{
	static const uint16_t hi[32] = {
		0x20ac, 0, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
		0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017d, 0,
		0, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
		0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0, 0x017e, 0x0178,
	};
	struct buf b = BUF_INIT;
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x80 && c < 0xa0 && hi[c - 0x80] == 0)
			return NULL;
	}
	buf_reserve(&b, len + len / 2 + 1);
	for (i = 0; i < len && s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x80)
			buf_addc(&b, (char)c);
		else
			put_utf8(&b, c < 0xa0 ? hi[c - 0x80] : c);
	}
	buf_addc(&b, '\0');
	b.len--;
	*outlen = b.len;
	return buf_steal(&b);
}

/* convert to UTF-8 (malloc'ed, valid UTF-8, no NULs) */
static char *
to_utf8(const char *s, size_t len, const char *charset, size_t *outlen)
{
	gsize rd = 0, wr = 0;
	gchar *g = NULL;
	char *r;

	if (len == 0 || s == NULL) {
		*outlen = 0;
		return xstrdup("");
	}
	if (charset == NULL || *charset == '\0' || ascii_strcasecmp(charset, "us-ascii") == 0 ||
	    ascii_strcasecmp(charset, "utf-8") == 0 || ascii_strcasecmp(charset, "utf8") == 0) {
		if (g_utf8_validate(s, (gssize)len, NULL)) {
			r = xstrndup(s, len);
			*outlen = strlen(r);    /* stops at a NUL byte */
			return r;
		}
		if (charset && ascii_strncasecmp(charset, "utf", 3) == 0) {
			g = g_utf8_make_valid(s, (gssize)len);
			r = xstrdup(g);
			g_free(g);
			*outlen = strlen(r);
			return r;
		}
		charset = "windows-1252";       /* undeclared 8-bit */
	}
	if (ascii_strcasecmp(charset, "iso-8859-1") == 0 || ascii_strcasecmp(charset, "latin1") == 0 ||
	    ascii_strcasecmp(charset, "iso8859-1") == 0)
		charset = "windows-1252";       /* as browsers do */
	if (ascii_strcasecmp(charset, "windows-1252") == 0 &&
	    (r = cp1252_to_utf8(s, len, outlen)) != NULL)
		return r;
	g = g_convert(s, (gssize)len, "UTF-8", g_mime_charset_iconv_name(charset), &rd, &wr, NULL);
	if (g == NULL || !g_utf8_validate(g, (gssize)wr, NULL)) {
		g_free(g);
		return latin1_to_utf8(s, len, outlen);
	}
	r = xstrndup(g, wr);
	g_free(g);
	*outlen = strlen(r);
	return r;
}

/* ---- the tree walk ---- */

static void
add_text(struct mime_msg *m, const char *type, char *text, size_t len, bool html,
    const char *raw, size_t rawlen)
{
	char *r = xmalloc(rawlen + 1);

	if (rawlen)
		memcpy(r, raw, rawlen);
	r[rawlen] = '\0';
	GROW(m->text, m->ntext, m->textcap);
	m->text[m->ntext].raw = r;
	m->text[m->ntext].rawlen = rawlen;
	m->text[m->ntext].type = xstrdup(type);
	m->text[m->ntext].text = text;
	m->text[m->ntext].len = len;
	m->text[m->ntext].html = html;
	m->ntext++;
}

static void
walk(struct mime_msg *m, GMimeObject *o, unsigned depth)
{
	if (o == NULL)
		return;
	if (depth > m->lim.max_depth) {
		m->flags |= MIME_F_DEPTH;
		return;
	}
	if (m->parts >= m->lim.max_parts) {
		m->flags |= MIME_F_PARTS;
		return;
	}
	m->parts++;
	if (depth > m->depth)
		m->depth = depth;

	if (GMIME_IS_MULTIPART(o)) {
		GMimeMultipart *mp = GMIME_MULTIPART(o);
		int n = g_mime_multipart_get_count(mp);
		for (int i = 0; i < n; i++)
			walk(m, g_mime_multipart_get_part(mp, i), depth + 1);
		return;
	}
	if (GMIME_IS_MESSAGE_PART(o)) {
		GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(o));
		if (inner) {
			const char *subj = g_mime_message_get_subject(inner);
			if (subj && *subj) {
				size_t l;
				char *t = to_utf8(subj, strlen(subj), "utf-8", &l);
				add_text(m, "message/rfc822", t, l, false, "", 0);
			}
			walk(m, g_mime_message_get_mime_part(inner), depth + 1);
		}
		return;
	}
	if (!GMIME_IS_PART(o))
		return;

	GMimePart *part = GMIME_PART(o);
	GMimeContentType *ct = g_mime_object_get_content_type(o);
	char *type = ct ? g_mime_content_type_get_mime_type(ct) : g_strdup("text/plain");
	const char *fname = g_mime_part_get_filename(part);
	GMimeDataWrapper *dw = g_mime_part_get_content(part);
	bool is_text = ct && g_mime_content_type_is_type(ct, "text", "*");
	bool attach = g_mime_part_is_attachment(part) || (fname && *fname);

	for (char *p = type; p && *p; p++)
		*p = (char)tolower((unsigned char)*p);
	if (is_text && !attach && dw) {
		GMimeStream *enc = g_mime_data_wrapper_get_stream(dw);
		gint64 elen = enc ? g_mime_stream_length(enc) : 0;
		if (elen < 0)
			elen = 0;
		if (m->decoded + (size_t)elen > m->lim.max_decoded) {
			m->flags |= MIME_F_DECODED;
		} else {
			GMimeStream *mem = g_mime_stream_mem_new();
			GByteArray *ba;
			const char *cs = g_mime_object_get_content_type_parameter(o, "charset");
			bool html = strcmp(type, "text/html") == 0;
			size_t tl, hl;
			char *t;

			g_mime_data_wrapper_write_to_stream(dw, mem);
			ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
			if (ba->len > m->lim.max_decoded - m->decoded) {
				m->flags |= MIME_F_DECODED;
				g_byte_array_set_size(ba, (guint)(m->lim.max_decoded - m->decoded));
			}
			m->decoded += ba->len;
			t = to_utf8((const char *)ba->data, ba->len, cs, &tl);
			if (html) {
				char *h = html_to_text(t, tl, &hl, href_cb, sa_uri_cb, m);
				free(t);
				t = h;
				tl = hl;
			}
			scan_urls(m, t, tl);
			add_text(m, type, t, tl, html, (const char *)ba->data, ba->len);
			g_object_unref(mem);
		}
	} else {
		GMimeStream *mem = g_mime_stream_mem_new();
		gint64 sz = dw ? g_mime_data_wrapper_write_to_stream(dw, mem) : 0;
		GByteArray *ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
		unsigned char *data = NULL;
		size_t fl;

		if (sz > 0 && ba->len > 0 && ba->len <= m->lim.max_decoded - m->attkept) {
			data = xmalloc(ba->len);
			memcpy(data, ba->data, ba->len);
			m->attkept += ba->len;
		}
		g_object_unref(mem);
		GROW(m->att, m->natt, m->attcap);
		m->att[m->natt].data = data;
		m->att[m->natt].filename = fname ? to_utf8(fname, strlen(fname), "utf-8", &fl) : xstrdup("");
		m->att[m->natt].type = xstrdup(type ? type : "application/octet-stream");
		m->att[m->natt].size = sz > 0 ? (size_t)sz : 0;
		m->natt++;
	}
	g_free(type);
}

/*
 * How many "multipart/" and "message/rfc822" (any case) the message holds,
 * stopping past stop: one memchr() walk over the slashes (rare in mail
 * text) instead of comparing at every byte.
 */
static size_t
count_containers(const char *data, size_t len, size_t stop)
{
	const char *p = data, *end = data + len, *sl;
	size_t n = 0;

	while (n <= stop && (sl = memchr(p, '/', (size_t)(end - p))) != NULL) {
		size_t before = (size_t)(sl - data), after = (size_t)(end - sl - 1);
		if ((before >= 9 && ascii_strncasecmp(sl - 9, "multipart", 9) == 0) ||
		    (before >= 7 && after >= 6 && ascii_strncasecmp(sl - 7, "message", 7) == 0 &&
		    ascii_strncasecmp(sl + 1, "rfc822", 6) == 0))
			n++;
		p = sl + 1;
	}
	return n;
}

static void
add_header(struct mime_msg *m, const char *name, const char *raw, size_t *used)
{
	size_t nl = strlen(name), rl = raw ? strlen(raw) : 0;
	char *unf, *dec;

	if (*used + nl + rl > m->lim.max_header) {
		m->flags |= MIME_F_HEADER;
		return;
	}
	*used += nl + rl + 3;
	unf = g_mime_utils_header_unfold(raw ? raw : "");
	{
		/* plain ASCII without an encoded word decodes to itself */
		const unsigned char *u = (const unsigned char *)unf;
		bool plain = strstr(unf, "=?") == NULL;
		for (; plain && *u; u++)
			plain = *u < 0x80;
		dec = plain ? g_strdup(unf) : g_mime_utils_header_decode_text(NULL, unf);
	}
	GROW(m->hdr, m->nhdr, m->hdrcap);
	m->hdr[m->nhdr].name = xstrdup(name);
	{
		size_t l;
		char *v = to_utf8(dec ? dec : unf, strlen(dec ? dec : unf), "utf-8", &l);
		/* trim leading blanks of the value */
		char *p = v;
		while (*p == ' ' || *p == '\t')
			p++;
		if (p != v)
			memmove(v, p, strlen(p) + 1);
		m->hdr[m->nhdr].value = v;
	}
	m->nhdr++;
	g_free(unf);
	g_free(dec);
}

/* the top-level header block, in order, as written (GMime files the
 * Content-* headers under the MIME part, not the message); returns the
 * start of the body */
static const char *
parse_headers(struct mime_msg *m, const char *data, size_t len, size_t *used)
{
	const char *body = data, *end = data + len, *lstart;
	struct buf name = BUF_INIT, val = BUF_INIT;

	for (lstart = data; lstart < end; ) {
		const char *nl = memchr(lstart, '\n', (size_t)(end - lstart));
		const char *le = nl ? nl : end;
		size_t ll = (size_t)(le - lstart);
		if (ll && lstart[ll - 1] == '\r')
			ll--;
		if (ll == 0) {
			body = nl ? nl + 1 : end;
			break;
		}
		if ((*lstart == ' ' || *lstart == '\t') && name.len) {
			/* Node.pm: s/\n[ \t]+/ /g */
			size_t k = 0;
			while (k < ll && (lstart[k] == ' ' || lstart[k] == '\t'))
				k++;
			buf_addc(&val, ' ');
			buf_add(&val, lstart + k, ll - k);
		} else {
			const char *c = memchr(lstart, ':', ll);
			if (name.len)
				add_header(m, name.data, val.data ? val.data : "", used);
			buf_reset(&name);
			buf_reset(&val);
			if (c == NULL) {
				body = lstart;
				break;
			}
			size_t nlen = (size_t)(c - lstart);
			while (nlen && (lstart[nlen - 1] == ' ' || lstart[nlen - 1] == '\t'))
				nlen--;
			buf_add(&name, lstart, nlen);
			buf_add(&val, c + 1, ll - (size_t)(c - lstart) - 1);
		}
		lstart = nl ? nl + 1 : end;
		body = lstart;
	}
	if (name.len)
		add_header(m, name.data, val.data ? val.data : "", used);
	buf_free(&name);
	buf_free(&val);
	return body;
}

struct mime_msg *
mime_parse(const char *data, size_t len, const struct mime_limits *lim, char **err)
{
	static const struct mime_limits deflim = MIME_LIMITS_DEFAULT;
	struct mime_msg *m;
	GMimeStream *st;
	GMimeParser *p;
	GMimeMessage *msg = NULL;
	size_t used = 0;

	if (err)
		*err = NULL;
	m = xcalloc(1, sizeof(*m));
	m->lim = lim ? *lim : deflim;
	/* an mbox envelope line is not a header */
	if (len >= 5 && memcmp(data, "From ", 5) == 0) {
		const char *nl = memchr(data, '\n', len);
		size_t skip = nl ? (size_t)(nl - data) + 1 : len;
		data += skip;
		len -= skip;
	}
	{
		/* is there a header block at all? */
		const char *e = memchr(data, ':', len < 1000 ? len : 1000);
		const char *nl = memchr(data, '\n', len < 1000 ? len : 1000);
		if (e == NULL || (nl && nl < e))
			m->flags |= MIME_F_BROKEN;
	}
	const char *hdr_body = parse_headers(m, data, len, &used);
	bool too_many = count_containers(data, len, m->lim.max_parts) > m->lim.max_parts;

	st = g_mime_stream_mem_new_with_buffer(data, len);
	p = g_mime_parser_new_with_stream(st);
	g_object_unref(st);
	if (!too_many)
		msg = g_mime_parser_construct_message(p, NULL);
	g_object_unref(p);

	if (msg == NULL) {
		/* the body as one text part */
		const char *body = hdr_body, *end = data + len;

		if (too_many)
			m->flags |= MIME_F_PARTS;
		else
			m->flags |= MIME_F_BROKEN;
		size_t bl = (size_t)(end - body), tl;
		if (bl > m->lim.max_decoded) {
			bl = m->lim.max_decoded;
			m->flags |= MIME_F_DECODED;
		}
		m->decoded = bl;
		char *t = to_utf8(body, bl, NULL, &tl);
		scan_urls(m, t, tl);
		add_text(m, "text/plain", t, tl, false, body, bl);
		m->parts = 1;
		return m;
	}

	walk(m, g_mime_message_get_mime_part(msg), 0);
	g_object_unref(msg);
	return m;
}

void
mime_free(struct mime_msg **mp)
{
	struct mime_msg *m = *mp;

	if (m == NULL)
		return;
	for (size_t i = 0; i < m->nhdr; i++) {
		free((char *)m->hdr[i].name);
		free((char *)m->hdr[i].value);
	}
	for (size_t i = 0; i < m->ntext; i++) {
		free((char *)m->text[i].type);
		free((char *)m->text[i].text);
		free((char *)m->text[i].raw);
	}
	for (size_t i = 0; i < m->natt; i++) {
		free((char *)m->att[i].filename);
		free((char *)m->att[i].type);
		free((void *)m->att[i].data);
	}
	for (size_t i = 0; i < m->nurl; i++) {
		free((char *)m->url[i].url);
		free((char *)m->url[i].host);
	}
	free(m->hdr);
	free(m->text);
	free(m->att);
	for (size_t i = 0; i < m->nuri; i++)
		free(m->uri[i]);
	free(m->uri);
	free(m->uriparsed);
	free(m->url);
	free(m);
	*mp = NULL;
}

unsigned mime_flags(const struct mime_msg *m) { return m->flags; }
unsigned mime_part_count(const struct mime_msg *m) { return m->parts; }
unsigned mime_max_depth(const struct mime_msg *m) { return m->depth; }
size_t mime_header_count(const struct mime_msg *m) { return m->nhdr; }
size_t mime_text_count(const struct mime_msg *m) { return m->ntext; }
size_t mime_attachment_count(const struct mime_msg *m) { return m->natt; }
size_t mime_url_count(const struct mime_msg *m) { return m->nurl; }

const struct mime_header *
mime_header_at(const struct mime_msg *m, size_t i)
{
	return i < m->nhdr ? &m->hdr[i] : NULL;
}

const char *
mime_header_get(const struct mime_msg *m, const char *name)
{
	for (size_t i = 0; i < m->nhdr; i++)
		if (ascii_strcasecmp(m->hdr[i].name, name) == 0)
			return m->hdr[i].value;
	return NULL;
}

const struct mime_text *
mime_text_at(const struct mime_msg *m, size_t i)
{
	return i < m->ntext ? &m->text[i] : NULL;
}

const struct mime_attachment *
mime_attachment_at(const struct mime_msg *m, size_t i)
{
	return i < m->natt ? &m->att[i] : NULL;
}

size_t mime_uri_count(const struct mime_msg *m) { return m->nuri; }

const char *
mime_uri_at(const struct mime_msg *m, size_t i)
{
	return i < m->nuri ? m->uri[i] : NULL;
}

bool
mime_uri_parsed(const struct mime_msg *m, size_t i)
{
	return i < m->nuri && m->uriparsed[i];
}

const struct mime_url *
mime_url_at(const struct mime_msg *m, size_t i)
{
	return i < m->nurl ? &m->url[i] : NULL;
}
