/*
 * rules.c - SpamAssassin-syntax rule files: loader, PCRE2 compiler and
 * evaluator.  See rules.h for the contract and docs/rules.md for what of
 * the SpamAssassin language is supported.
 *
 * Runs in: the config loader (rules_load, once per load/reload, blocking
 * file reads) and the data filters' pool threads (rules_eval).  The rule
 * set is immutable after rules_load(); every rules_eval() call has its own
 * PCRE2 match data, match context and JIT stack, so threads share nothing
 * writable.
 *
 * Untrusted input: the message (via the MIME tree and the raw bytes).
 * Limits: every regex run is bounded by PCRE2's match, depth and heap
 * limits (RULES_MATCH_LIMIT ...), a rule counts at most RULES_MAX_HITS
 * matches, body text is split into lines of at most 2048 bytes as
 * SpamAssassin does, and mime_parse() has already bounded the decoded size.
 * Rule files are trusted admin input but still parsed with bounded lines
 * and include depth.
 */
#include "config.h"
#include "rules.h"
#include "mime.h"
#include "buf.h"
#include "util.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define RULES_MATCH_LIMIT   1000000u    /* PCRE2 match() calls per run */
#define RULES_DEPTH_LIMIT   10000u      /* backtracking depth per run */
#define RULES_HEAP_LIMIT    (16u * 1024) /* KiB of backtracking heap */
#define RULES_MAX_HITS      1000u       /* matches counted per rule */
#define RULES_LINE_MAX      65536       /* bytes of one rule file line */
#define RULES_INCLUDE_DEPTH 8
#define RULES_IF_DEPTH      64
#define RULES_META_TOKENS   4096
#define RULES_MAX_TLDS      20000       /* util_rb_tld entries */
#define RULES_MAX_URIS      4000        /* uri rule strings per message */
#define RULES_BODY_LINE     2048        /* SpamAssassin MAX_BODY_LINE_LENGTH */
#define RULES_HASH          16384u
#define RULES_SA_VERSION    4.000001    /* `if version >= X` compares to this */

enum rtype { RT_NONE, RT_HEADER, RT_BODY, RT_RAWBODY, RT_FULL, RT_URI, RT_META };
enum hmode { HM_PLAIN, HM_RAW, HM_ADDR, HM_NAME };
enum hspecial { HS_NONE, HS_ALL, HS_TOCC, HS_MESSAGEID };

/* meta expression, in reverse Polish notation */
enum mop { MO_NUM, MO_RULE, MO_NOT, MO_NEG, MO_MUL, MO_DIV, MO_ADD, MO_SUB,
	MO_LT, MO_GT, MO_LE, MO_GE, MO_EQ, MO_NE, MO_AND, MO_OR };

struct mtok {
	enum mop op;
	double num;             /* MO_NUM */
	char *name;             /* MO_RULE, resolved to idx at finish */
	int idx;                /* -1: undefined, counts as 0 */
};

struct rule {
	char *name;
	int next;               /* hash chain */
	enum rtype type;        /* RT_NONE: not (supportedly) defined */
	bool unsupported;       /* last definition could not be loaded */
	bool mentioned_skipped; /* defined in an if branch not taken */
	bool plugin_shadowed;   /* ... not taken for lack of a plugin: the
				 * definition SpamAssassin runs is that one */
	char *where;            /* FILE:LINE of the definition */
	/* header */
	char *hdr;
	enum hmode hmode;
	enum hspecial hspecial;
	bool exists, negate;
	char *unset;
	/* regex */
	pcre2_code *re;
	/* meta */
	struct mtok *expr;
	size_t nexpr;
	int mstate;             /* 0 new, 1 visiting, 2 ok, 3 bad */
	/* common */
	double score;
	bool has_score;
	char *desc;
	bool multiple, nice;
	unsigned maxhits;
	bool active;
};

struct rules {
	struct rule *v;
	size_t n, cap;
	int hash[RULES_HASH];
	int *order;             /* active non-meta rules */
	size_t norder;
	int *metas;             /* active meta rules, dependencies first */
	size_t nmetas;
	size_t nactive;
	char **tld;             /* util_rb_tld, lowercase, sorted */
	size_t ntld, tldcap;
	/* ReplaceTags-free build: only what the loader needs */
};

struct loader {
	struct rules *r;
	struct rules_report *rep;
	int depth;
	pcre2_compile_context *cctx;
	const char *stack[RULES_INCLUDE_DEPTH + 1];
	bool plugdep[RULES_IF_DEPTH];   /* if level depends on a plugin */
};

/* ------------------------------------------------------------------ */
/* report */

const char *
rules_issue_kind_name(enum rules_issue_kind k)
{
	static const char *const names[RULES_I_NKINDS] = {
		"eval: test (needs Perl code), unsupported",
		"bad regex",
		"unknown directive",
		"unsupported rule type or option",
		"meta depending on a skipped rule",
		"syntax error",
		"file error",
	};
	return (unsigned)k < RULES_I_NKINDS ? names[k] : "?";
}

static void
issue(struct loader *L, enum rules_issue_kind k, const char *file, unsigned line,
    const char *fmt, ...)
{
	struct rules_report *rep = L->rep;
	struct rules_issue *is;
	char where[4200], text[1024];
	va_list ap;

	if (rep == NULL)
		return;
	rep->count[k]++;
	if (k == RULES_I_REGEX || k == RULES_I_SYNTAX || k == RULES_I_FILE)
		rep->hard++;
	if (rep->nissues >= RULES_MAX_ISSUES)
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (line)
		snprintf(where, sizeof(where), "%s:%u", file, line);
	else
		snprintf(where, sizeof(where), "%s", file);
	rep->issues = xreallocarray(rep->issues, rep->nissues + 1, sizeof(*rep->issues));
	is = &rep->issues[rep->nissues++];
	is->kind = k;
	is->where = xstrdup(where);
	is->text = xstrdup(text);
}

void
rules_report_free(struct rules_report *rep)
{
	size_t i;

	if (rep == NULL)
		return;
	for (i = 0; i < rep->nissues; i++) {
		free(rep->issues[i].where);
		free(rep->issues[i].text);
	}
	free(rep->issues);
	memset(rep, 0, sizeof(*rep));
}

/* ------------------------------------------------------------------ */
/* the rule table */

static unsigned
name_hash(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h % RULES_HASH;
}

static int
rule_find(const struct rules *r, const char *name)
{
	int i;

	for (i = r->hash[name_hash(name)]; i >= 0; i = r->v[i].next)
		if (strcmp(r->v[i].name, name) == 0)
			return i;
	return -1;
}

static struct rule *
rule_get(struct rules *r, const char *name)
{
	unsigned h;
	int i;

	if ((i = rule_find(r, name)) >= 0)
		return &r->v[i];
	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 256;
		r->v = xreallocarray(r->v, r->cap, sizeof(*r->v));
	}
	h = name_hash(name);
	memset(&r->v[r->n], 0, sizeof(r->v[r->n]));
	r->v[r->n].name = xstrdup(name);
	r->v[r->n].next = r->hash[h];
	r->hash[h] = (int)r->n;
	return &r->v[r->n++];
}

static void
rule_clear_def(struct rule *ru)
{
	size_t i;

	free(ru->where);
	free(ru->hdr);
	free(ru->unset);
	pcre2_code_free(ru->re);
	for (i = 0; i < ru->nexpr; i++)
		free(ru->expr[i].name);
	free(ru->expr);
	ru->where = ru->hdr = ru->unset = NULL;
	ru->re = NULL;
	ru->expr = NULL;
	ru->nexpr = 0;
	ru->type = RT_NONE;
	ru->hmode = HM_PLAIN;
	ru->hspecial = HS_NONE;
	ru->exists = ru->negate = false;
	ru->unsupported = false;
}

static bool
valid_name(const char *s)
{
	if (!(isalpha((unsigned char)*s) || *s == '_'))
		return false;
	for (; *s; s++)
		if (!(isalnum((unsigned char)*s) || *s == '_'))
			return false;
	return true;
}

/* ------------------------------------------------------------------ */
/* Perl regex literal -> PCRE2 */

int
rules_perl_re(const char *s, size_t len, char **pattern, unsigned *options,
    const char **why)
{
	char open, close;
	size_t i, end;
	unsigned opt = 0;

	*pattern = NULL;
	*options = 0;
	while (len > 0 && isspace((unsigned char)s[len - 1]))
		len--;
	if (len > 0 && s[0] == 'm' && len > 1 && !isalnum((unsigned char)s[1]) &&
	    !isspace((unsigned char)s[1])) {
		s++;
		len--;
	}
	if (len < 2) {
		*why = "no regex";
		return -1;
	}
	open = s[0];
	if (isalnum((unsigned char)open) || isspace((unsigned char)open) || open == '\\') {
		*why = "regex must start with a delimiter (/re/ or m{re})";
		return -1;
	}
	switch (open) {
	case '{': close = '}'; break;
	case '(': close = ')'; break;
	case '[': close = ']'; break;
	case '<': close = '>'; break;
	default:  close = open; break;
	}
	/* the regex ends at the last closing delimiter; flags follow */
	for (end = len - 1; end > 0 && s[end] != close; end--)
		;
	if (end == 0) {
		*why = "unterminated regex";
		return -1;
	}
	for (i = end + 1; i < len; i++) {
		switch (s[i]) {
		case 'i': opt |= PCRE2_CASELESS; break;
		case 's': opt |= PCRE2_DOTALL; break;
		case 'm': opt |= PCRE2_MULTILINE; break;
		case 'x': opt |= PCRE2_EXTENDED; break;
		case 'n': opt |= PCRE2_NO_AUTO_CAPTURE; break;
		case 'g': case 'o': case 'a': case 'u': case 'l': case 'd': case 'p':
			break;          /* no meaning for a match on bytes */
		default:
			*why = "unknown regex modifier";
			return -1;
		}
	}
	/* code blocks are Perl, not regex */
	for (i = 1; i + 2 < end; i++) {
		if (s[i] == '\\') {
			i++;
			continue;
		}
		if (s[i] == '(' && s[i + 1] == '?' && (s[i + 2] == '{' ||
		    (s[i + 2] == '?' && i + 3 < end && s[i + 3] == '{'))) {
			*why = "Perl code block (?{...}) in regex";
			return -1;
		}
	}
	/* PCRE2 knows \z \Z \A \Q..\E (?i) and the rest of the Perl syntax
	 * SpamAssassin rules use; unknown letter escapes are literals via
	 * PCRE2_EXTRA_BAD_ESCAPE_IS_LITERAL.  An escaped delimiter (\/ or \})
	 * is a literal in PCRE2 as well. */
	*pattern = xstrndup(s + 1, end - 1);
	*options = opt;
	return 0;
}

static pcre2_code *
compile_re(struct loader *L, const char *file, unsigned line, const char *name,
    const char *s, size_t len)
{
	char *pat;
	unsigned opt;
	const char *why;
	int ec;
	PCRE2_SIZE eo;
	pcre2_code *re;
	PCRE2_UCHAR msg[256];

	if (rules_perl_re(s, len, &pat, &opt, &why) < 0) {
		issue(L, RULES_I_REGEX, file, line, "%s: %s", name, why);
		return NULL;
	}
	re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opt, &ec, &eo, L->cctx);
	if (re == NULL) {
		pcre2_get_error_message(ec, msg, sizeof(msg));
		issue(L, RULES_I_REGEX, file, line, "%s: %s at offset %zu", name,
		    (const char *)msg, (size_t)eo);
		free(pat);
		return NULL;
	}
	free(pat);
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  /* interpreter if no JIT */
	return re;
}

/* ------------------------------------------------------------------ */
/* meta expressions */

static int
mop_prec(enum mop op)
{
	switch (op) {
	case MO_NOT: case MO_NEG: return 7;
	case MO_MUL: case MO_DIV: return 6;
	case MO_ADD: case MO_SUB: return 5;
	case MO_LT: case MO_GT: case MO_LE: case MO_GE: return 4;
	case MO_EQ: case MO_NE: return 3;
	case MO_AND: return 2;
	case MO_OR: return 1;
	default: return 0;
	}
}

/* shunting-yard; -1 with *why on a syntax error */
static int
meta_compile(const char *s, struct mtok **out, size_t *nout, const char **why)
{
	struct mtok *o = NULL;
	int ops[RULES_META_TOKENS];     /* operator stack; -1 = '(' */
	size_t no = 0, nops = 0, depth_vals = 0;
	bool want_operand = true;

	*out = NULL;
	*nout = 0;
	while (*s) {
		enum mop op;
		int is_bin = 1;

		if (isspace((unsigned char)*s)) {
			s++;
			continue;
		}
		if (no + 2 >= RULES_META_TOKENS || nops + 2 >= RULES_META_TOKENS) {
			*why = "meta expression too long";
			goto bad;
		}
		if (want_operand) {
			if (isalpha((unsigned char)*s) || *s == '_') {
				const char *b = s;
				while (isalnum((unsigned char)*s) || *s == '_')
					s++;
				o = xreallocarray(o, no + 1, sizeof(*o));
				o[no].op = MO_RULE;
				o[no].name = xstrndup(b, (size_t)(s - b));
				o[no].idx = -1;
				o[no].num = 0;
				no++;
				depth_vals++;
				want_operand = false;
				continue;
			}
			if (isdigit((unsigned char)*s) || *s == '.') {
				char *e;
				double d = strtod(s, &e);
				if (e == s) {
					*why = "bad number";
					goto bad;
				}
				s = e;
				o = xreallocarray(o, no + 1, sizeof(*o));
				o[no].op = MO_NUM;
				o[no].num = d;
				o[no].name = NULL;
				o[no].idx = -1;
				no++;
				depth_vals++;
				want_operand = false;
				continue;
			}
			if (*s == '(') {
				ops[nops++] = -1;
				s++;
				continue;
			}
			if (*s == '!' && s[1] != '=') {
				ops[nops++] = MO_NOT;
				s++;
				continue;
			}
			if (*s == '-') {
				ops[nops++] = MO_NEG;
				s++;
				continue;
			}
			if (*s == '+') {
				s++;
				continue;
			}
			*why = "operand expected";
			goto bad;
		}
		if (*s == ')') {
			while (nops > 0 && ops[nops - 1] != -1) {
				o = xreallocarray(o, no + 1, sizeof(*o));
				memset(&o[no], 0, sizeof(o[no]));
				o[no++].op = (enum mop)ops[--nops];
			}
			if (nops == 0) {
				*why = "unbalanced )";
				goto bad;
			}
			nops--;
			s++;
			continue;
		}
		if (s[0] == '&' && s[1] == '&') { op = MO_AND; s += 2; }
		else if (s[0] == '|' && s[1] == '|') { op = MO_OR; s += 2; }
		else if (s[0] == '>' && s[1] == '=') { op = MO_GE; s += 2; }
		else if (s[0] == '<' && s[1] == '=') { op = MO_LE; s += 2; }
		else if (s[0] == '=' && s[1] == '=') { op = MO_EQ; s += 2; }
		else if (s[0] == '!' && s[1] == '=') { op = MO_NE; s += 2; }
		else if (*s == '>') { op = MO_GT; s++; }
		else if (*s == '<') { op = MO_LT; s++; }
		else if (*s == '+') { op = MO_ADD; s++; }
		else if (*s == '-') { op = MO_SUB; s++; }
		else if (*s == '*') { op = MO_MUL; s++; }
		else if (*s == '/') { op = MO_DIV; s++; }
		else {
			*why = "operator expected";
			goto bad;
		}
		(void)is_bin;
		while (nops > 0 && ops[nops - 1] != -1 &&
		    mop_prec((enum mop)ops[nops - 1]) >= mop_prec(op)) {
			o = xreallocarray(o, no + 1, sizeof(*o));
			memset(&o[no], 0, sizeof(o[no]));
			o[no++].op = (enum mop)ops[--nops];
		}
		ops[nops++] = (int)op;
		want_operand = true;
	}
	if (want_operand) {
		*why = no ? "operand expected at the end" : "empty meta expression";
		goto bad;
	}
	while (nops > 0) {
		if (ops[nops - 1] == -1) {
			*why = "unbalanced (";
			goto bad;
		}
		o = xreallocarray(o, no + 1, sizeof(*o));
		memset(&o[no], 0, sizeof(o[no]));
		o[no++].op = (enum mop)ops[--nops];
	}
	(void)depth_vals;
	*out = o;
	*nout = no;
	return 0;
bad:
	for (size_t i = 0; i < no; i++)
		free(o[i].name);
	free(o);
	return -1;
}

/* Perl semantics: && and || give an operand, not a boolean */
static double
meta_eval(const struct mtok *e, size_t n, const double *vals)
{
	double st[RULES_META_TOKENS];
	size_t sp = 0, i;

	for (i = 0; i < n; i++) {
		double a, b;

		switch (e[i].op) {
		case MO_NUM:
			st[sp++] = e[i].num;
			continue;
		case MO_RULE:
			st[sp++] = e[i].idx >= 0 ? vals[e[i].idx] : 0;
			continue;
		case MO_NOT:
			if (sp < 1) return 0;
			st[sp - 1] = st[sp - 1] == 0 ? 1 : 0;
			continue;
		case MO_NEG:
			if (sp < 1) return 0;
			st[sp - 1] = -st[sp - 1];
			continue;
		default:
			break;
		}
		if (sp < 2)
			return 0;
		b = st[--sp];
		a = st[sp - 1];
		switch (e[i].op) {
		case MO_MUL: a = a * b; break;
		case MO_DIV: a = b == 0 ? 0 : a / b; break;
		case MO_ADD: a = a + b; break;
		case MO_SUB: a = a - b; break;
		case MO_LT: a = a < b; break;
		case MO_GT: a = a > b; break;
		case MO_LE: a = a <= b; break;
		case MO_GE: a = a >= b; break;
		case MO_EQ: a = a == b; break;
		case MO_NE: a = a != b; break;
		case MO_AND: a = a != 0 ? b : a; break;
		case MO_OR: a = a != 0 ? a : b; break;
		default: break;
		}
		st[sp - 1] = a;
	}
	return sp == 1 ? st[0] : 0;
}

/* ------------------------------------------------------------------ */
/* `if` expressions: version, perl_version, plugin(), can(), ! && || () */

struct ifx {
	const char *s;
	bool err;
};

static double ifx_or(struct ifx *);

static void
ifx_ws(struct ifx *x)
{
	while (isspace((unsigned char)*x->s))
		x->s++;
}

static bool
can_feature(const char *name, size_t len)
{
	/* features of SpamAssassin 4's rule language that moat understands
	 * as well (they guard plain regex and meta rules) */
	static const char *const yes[] = {
		"Mail::SpamAssassin::Conf::feature_bug6558_free",
		"Mail::SpamAssassin::Conf::perl_min_version_5010000",
		"Mail::SpamAssassin::Conf::feature_welcomelist_blocklist",
		"Mail::SpamAssassin::Conf::compat_welcomelist_blocklist",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(yes); i++)
		if (strlen(yes[i]) == len && memcmp(yes[i], name, len) == 0)
			return true;
	return false;
}

static double
ifx_prim(struct ifx *x)
{
	double v;

	ifx_ws(x);
	if (*x->s == '!') {
		x->s++;
		return ifx_prim(x) == 0;
	}
	if (*x->s == '(') {
		x->s++;
		v = ifx_or(x);
		ifx_ws(x);
		if (*x->s != ')')
			x->err = true;
		else
			x->s++;
		return v;
	}
	if (strncmp(x->s, "version", 7) == 0 && !isalnum((unsigned char)x->s[7])) {
		x->s += 7;
		return RULES_SA_VERSION;
	}
	if (strncmp(x->s, "perl_version", 12) == 0) {
		x->s += 12;
		return 5.036;
	}
	if (strncmp(x->s, "plugin(", 7) == 0 || strncmp(x->s, "can(", 4) == 0 ||
	    strncmp(x->s, "has(", 4) == 0) {
		bool can = x->s[0] == 'c';
		const char *b = strchr(x->s, '(') + 1, *e = strchr(b, ')');
		if (e == NULL) {
			x->err = true;
			return 0;
		}
		x->s = e + 1;
		while (b < e && isspace((unsigned char)*b))
			b++;
		/* no Perl plugins here: plugin(...) is false */
		return can ? can_feature(b, (size_t)(e - b)) : 0;
	}
	if (isdigit((unsigned char)*x->s)) {
		char *e;
		v = strtod(x->s, &e);
		x->s = e;
		return v;
	}
	x->err = true;
	return 0;
}

static double
ifx_cmp(struct ifx *x)
{
	double a = ifx_prim(x), b;

	ifx_ws(x);
	if (strncmp(x->s, ">=", 2) == 0) { x->s += 2; b = ifx_prim(x); return a >= b; }
	if (strncmp(x->s, "<=", 2) == 0) { x->s += 2; b = ifx_prim(x); return a <= b; }
	if (strncmp(x->s, "==", 2) == 0) { x->s += 2; b = ifx_prim(x); return a == b; }
	if (strncmp(x->s, "!=", 2) == 0) { x->s += 2; b = ifx_prim(x); return a != b; }
	if (*x->s == '>') { x->s++; b = ifx_prim(x); return a > b; }
	if (*x->s == '<') { x->s++; b = ifx_prim(x); return a < b; }
	return a;
}

static double
ifx_and(struct ifx *x)
{
	double a = ifx_cmp(x);

	for (;;) {
		ifx_ws(x);
		if (strncmp(x->s, "&&", 2) != 0)
			return a;
		x->s += 2;
		double b = ifx_cmp(x);
		a = a != 0 && b != 0;
	}
}

static double
ifx_or(struct ifx *x)
{
	double a = ifx_and(x);

	for (;;) {
		ifx_ws(x);
		if (strncmp(x->s, "||", 2) != 0)
			return a;
		x->s += 2;
		double b = ifx_and(x);
		a = a != 0 || b != 0;
	}
}

/* ------------------------------------------------------------------ */
/* loading */

static int load_path(struct loader *, const char *path, bool top);

static int
str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* directives that configure SpamAssassin itself, not rules: accepted and
 * ignored (not reported as unknown) */
static bool
ignored_directive(const char *d)
{
	static const char *const pfx[] = {
		"def_whitelist_", "def_welcomelist_", "whitelist_", "welcomelist_",
		"blacklist_", "blocklist_", "unwhitelist_", "unblacklist_",
		"bayes_", "util_rb_", "dns_", "clear_", "enlist_", "delist_",
		"uridnsbl_skip", "freemail_", "trusted_", "internal_", "msa_",
		"report", "add_header", "remove_header", "use_", "skip_",
	};
	static const char *const exact[] = {
		"lang", "priority", "reuse", "require_version", "unsafe_report",
		"required_score", "required_hits", "adsp_override",
		"redirector_pattern", "originating_ip_headers", "url_shortener",
		"loadplugin", "tryplugin", "rewrite_header", "ok_locales",
		"ok_languages", "normalize_charset", "envelope_sender_header",
		"fold_headers", "lock_method", "util_rb_tld", "parse_dkim_uris",
		"body_part_scan_size", "rawbody_part_scan_size", "allow_user_rules",
		"autolearn", "score_set", "uri_block_cc", "uri_block_cont",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(exact); i++)
		if (strcmp(d, exact[i]) == 0)
			return true;
	for (i = 0; i < ARRAY_SIZE(pfx); i++)
		if (strncmp(d, pfx[i], strlen(pfx[i])) == 0)
			return true;
	return false;
}

/* directives whose second word names a rule moat cannot run */
static bool
unsupported_rule_directive(const char *d)
{
	static const char *const u[] = {
		"mimeheader", "askdns", "urirhssub", "urirhsbl", "uridnsbl",
		"uridnssub", "uri_detail", "test", "hashbl", "check_hashbl",
		"dns_block_rule", "rbl", "header_eval", "meta_eval", "uri_eval",
		"replace_rules", "replace_tag", "replace_pre", "replace_inter",
		"replace_post", "urirhssub", "body_eval", "describe_eval",
		"asn_prefix", "dkim_", "pdfinfo", "olemacro",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(u); i++)
		if (strcmp(d, u[i]) == 0)
			return true;
	return false;
}

static char *
next_word(char **p)
{
	char *s = *p, *b;

	while (isspace((unsigned char)*s))
		s++;
	if (*s == '\0') {
		*p = s;
		return NULL;
	}
	b = s;
	while (*s && !isspace((unsigned char)*s))
		s++;
	if (*s)
		*s++ = '\0';
	while (isspace((unsigned char)*s))
		s++;
	*p = s;
	return b;
}

static void
def_where(struct rule *ru, const char *file, unsigned line)
{
	char w[4200];

	snprintf(w, sizeof(w), "%s:%u", file, line);
	ru->where = xstrdup(w);
}

static void
mark_unsupported(struct rule *ru, const char *file, unsigned line)
{
	rule_clear_def(ru);
	ru->unsupported = true;
	def_where(ru, file, line);
}

static void
parse_header_rule(struct loader *L, struct rule *ru, char *rest,
    const char *file, unsigned line)
{
	char *p, *hdr, *colon, *re, *unset = NULL;
	bool neg;

	if (strncmp(rest, "exists:", 7) == 0) {
		hdr = rest + 7;
		for (p = hdr; *p && !isspace((unsigned char)*p); p++)
			;
		*p = '\0';
		rule_clear_def(ru);
		ru->type = RT_HEADER;
		ru->exists = true;
		ru->hdr = xstrdup(hdr);
		if (strcmp(hdr, "ALL") == 0)
			ru->hspecial = HS_ALL;
		else if (ascii_strcasecmp(hdr, "ToCc") == 0)
			ru->hspecial = HS_TOCC;
		else if (strcmp(hdr, "MESSAGEID") == 0)
			ru->hspecial = HS_MESSAGEID;
		def_where(ru, file, line);
		return;
	}
	/* Hdr[:mod] =~ /re/flags [if-unset: STR] */
	for (p = rest; *p && !isspace((unsigned char)*p) && *p != '=' && *p != '!'; p++)
		;
	hdr = xstrndup(rest, (size_t)(p - rest));
	while (isspace((unsigned char)*p))
		p++;
	if ((p[0] != '=' && p[0] != '!') || p[1] != '~') {
		issue(L, RULES_I_SYNTAX, file, line, "%s: expected =~ or !~ after the header name",
		    ru->name);
		mark_unsupported(ru, file, line);
		free(hdr);
		return;
	}
	neg = p[0] == '!';
	re = p + 2;
	while (isspace((unsigned char)*re))
		re++;
	if ((p = strstr(re, "[if-unset:")) != NULL) {
		char *u = p + 10, *e;
		*p = '\0';
		while (isspace((unsigned char)*u))
			u++;
		if ((e = strrchr(u, ']')) != NULL)
			*e = '\0';
		unset = u;
	}
	rule_clear_def(ru);
	ru->negate = neg;
	if ((colon = strchr(hdr, ':')) != NULL) {
		*colon++ = '\0';
		if (strcmp(colon, "raw") == 0)
			ru->hmode = HM_RAW;
		else if (strcmp(colon, "addr") == 0)
			ru->hmode = HM_ADDR;
		else if (strcmp(colon, "name") == 0)
			ru->hmode = HM_NAME;
		else {
			issue(L, RULES_I_UNSUPPORTED, file, line, "%s: header modifier :%s",
			    ru->name, colon);
			mark_unsupported(ru, file, line);
			free(hdr);
			return;
		}
	}
	if (strcmp(hdr, "ALL") == 0)
		ru->hspecial = HS_ALL;
	else if (ascii_strcasecmp(hdr, "ToCc") == 0)
		ru->hspecial = HS_TOCC;
	else if (strcmp(hdr, "MESSAGEID") == 0)
		ru->hspecial = HS_MESSAGEID;
	else if (strncmp(hdr, "ALL-", 4) == 0 || ascii_strcasecmp(hdr, "EnvelopeFrom") == 0 ||
	    ascii_strncasecmp(hdr, "X-Spam-Relays-", 14) == 0) {
		issue(L, RULES_I_UNSUPPORTED, file, line,
		    "%s: pseudo-header %s (needs SpamAssassin's relay analysis)", ru->name, hdr);
		mark_unsupported(ru, file, line);
		free(hdr);
		return;
	}
	ru->re = compile_re(L, file, line, ru->name, re, strlen(re));
	if (ru->re == NULL) {
		mark_unsupported(ru, file, line);
		free(hdr);
		return;
	}
	ru->type = RT_HEADER;
	ru->hdr = hdr;
	ru->unset = unset ? xstrdup(unset) : NULL;
	def_where(ru, file, line);
}

static void
parse_line(struct loader *L, char *line, const char *file, unsigned lno,
    bool *cond, int *ncond, bool *taken, bool *in_else)
{
	char *p = line, *dir, *name;
	struct rule *ru;
	bool active = true;
	int i;

	for (i = 0; i < *ncond; i++)
		active = active && cond[i];

	dir = next_word(&p);
	if (dir == NULL)
		return;

	/* conditionals first: they count even inside inactive branches */
	if (strcmp(dir, "if") == 0 || strcmp(dir, "ifplugin") == 0) {
		bool v;
		if (*ncond >= RULES_IF_DEPTH) {
			issue(L, RULES_I_SYNTAX, file, lno, "if nested too deep");
			return;
		}
		if (dir[2] == 'p') {
			v = false;      /* no Perl plugins */
		} else {
			struct ifx x = { p, false };
			v = ifx_or(&x) != 0;
			ifx_ws(&x);
			if (x.err || (*x.s && *x.s != '#')) {
				issue(L, RULES_I_UNSUPPORTED, file, lno,
				    "if expression not understood, branch skipped: %s", p);
				v = false;
			}
		}
		L->plugdep[*ncond] = dir[2] == 'p' || strstr(p, "plugin(") != NULL;
		cond[*ncond] = v;
		taken[*ncond] = v;
		in_else[*ncond] = false;
		(*ncond)++;
		return;
	}
	if (strcmp(dir, "else") == 0) {
		if (*ncond == 0 || in_else[*ncond - 1]) {
			issue(L, RULES_I_SYNTAX, file, lno, "else without if");
			return;
		}
		cond[*ncond - 1] = !taken[*ncond - 1];
		in_else[*ncond - 1] = true;
		return;
	}
	if (strcmp(dir, "endif") == 0) {
		if (*ncond == 0)
			issue(L, RULES_I_SYNTAX, file, lno, "endif without if");
		else
			(*ncond)--;
		return;
	}

	if (!active) {
		if (L->rep)
			L->rep->skipped_block++;
		/* remember rule names defined here: a meta using them cannot be
		 * evaluated the way SpamAssassin would */
		if (strcmp(dir, "header") == 0 || strcmp(dir, "body") == 0 ||
		    strcmp(dir, "rawbody") == 0 || strcmp(dir, "full") == 0 ||
		    strcmp(dir, "uri") == 0 || strcmp(dir, "meta") == 0 ||
		    unsupported_rule_directive(dir)) {
			if ((name = next_word(&p)) != NULL && valid_name(name)) {
				bool plug = false;
				for (i = 0; i < *ncond; i++)
					plug = plug || (!cond[i] && L->plugdep[i]);
				rule_get(L->r, name)->mentioned_skipped = true;
				if (plug)
					rule_get(L->r, name)->plugin_shadowed = true;
				if (strncmp(p, "eval:", 5) == 0)
					issue(L, RULES_I_EVAL, file, lno, "%s: %s (in a branch not taken)",
					    name, p);
			}
		}
		return;
	}

	if (strcmp(dir, "include") == 0) {
		char path[4200];
		const char *f = p;
		char *e = p + strlen(p);
		while (e > p && isspace((unsigned char)e[-1]))
			*--e = '\0';
		if (*f != '/') {
			const char *slash = strrchr(file, '/');
			snprintf(path, sizeof(path), "%.*s/%s",
			    slash ? (int)(slash - file) : 1, slash ? file : ".", f);
		} else
			snprintf(path, sizeof(path), "%s", f);
		(void)load_path(L, path, false);
		return;
	}

	if (strcmp(dir, "header") == 0 || strcmp(dir, "body") == 0 ||
	    strcmp(dir, "rawbody") == 0 || strcmp(dir, "full") == 0 ||
	    strcmp(dir, "uri") == 0 || strcmp(dir, "meta") == 0) {
		name = next_word(&p);
		if (name == NULL || !valid_name(name)) {
			issue(L, RULES_I_SYNTAX, file, lno, "%s: missing or bad rule name", dir);
			return;
		}
		ru = rule_get(L->r, name);
		if (*p == '\0') {
			issue(L, RULES_I_SYNTAX, file, lno, "%s: empty rule", name);
			mark_unsupported(ru, file, lno);
			return;
		}
		if (strncmp(p, "eval:", 5) == 0 || strncmp(p, "rbleval:", 8) == 0) {
			issue(L, RULES_I_EVAL, file, lno, "%s: %s", name, p);
			mark_unsupported(ru, file, lno);
			return;
		}
		if (dir[0] == 'h') {
			parse_header_rule(L, ru, p, file, lno);
			return;
		}
		if (dir[0] == 'm') {
			const char *why;
			struct mtok *e;
			size_t ne;
			if (meta_compile(p, &e, &ne, &why) < 0) {
				issue(L, RULES_I_SYNTAX, file, lno, "%s: meta: %s", name, why);
				mark_unsupported(ru, file, lno);
				return;
			}
			rule_clear_def(ru);
			ru->type = RT_META;
			ru->expr = e;
			ru->nexpr = ne;
			def_where(ru, file, lno);
			return;
		}
		rule_clear_def(ru);
		ru->re = compile_re(L, file, lno, name, p, strlen(p));
		if (ru->re == NULL) {
			mark_unsupported(ru, file, lno);
			return;
		}
		ru->type = dir[0] == 'b' ? RT_BODY : dir[0] == 'r' ? RT_RAWBODY :
		    dir[0] == 'f' ? RT_FULL : RT_URI;
		def_where(ru, file, lno);
		return;
	}
	if (strcmp(dir, "score") == 0) {
		char *v, *e;
		double d;
		name = next_word(&p);
		v = next_word(&p);
		if (name == NULL || v == NULL || !valid_name(name)) {
			issue(L, RULES_I_SYNTAX, file, lno, "score: NAME and a number expected");
			return;
		}
		/* the first of 1 or 4 scores: set 0, no Bayes, no network */
		d = strtod(v, &e);
		if (e == v || *e != '\0' || !isfinite(d)) {
			issue(L, RULES_I_SYNTAX, file, lno, "score %s: bad number %s", name, v);
			return;
		}
		ru = rule_get(L->r, name);
		ru->score = d;
		ru->has_score = true;
		return;
	}
	if (strcmp(dir, "describe") == 0) {
		name = next_word(&p);
		if (name == NULL || !valid_name(name))
			return;
		ru = rule_get(L->r, name);
		free(ru->desc);
		ru->desc = xstrdup(p);
		return;
	}
	if (strcmp(dir, "tflags") == 0) {
		char *f;
		name = next_word(&p);
		if (name == NULL || !valid_name(name))
			return;
		ru = rule_get(L->r, name);
		ru->multiple = ru->nice = false;
		ru->maxhits = 0;
		while ((f = next_word(&p)) != NULL) {
			if (strcmp(f, "multiple") == 0)
				ru->multiple = true;
			else if (strcmp(f, "nice") == 0)
				ru->nice = true;
			else if (strncmp(f, "maxhits=", 8) == 0) {
				long long m;
				if (parse_ll(f + 8, 1, RULES_MAX_HITS, &m))
					ru->maxhits = (unsigned)m;
			}
			/* net, learn, userconf, noautolearn, publish, ...: noted,
			 * nothing to do without network tests and Bayes here */
		}
		return;
	}
	if (unsupported_rule_directive(dir)) {
		name = next_word(&p);
		if (name && valid_name(name) && strncmp(dir, "replace_", 8) != 0) {
			ru = rule_get(L->r, name);
			mark_unsupported(ru, file, lno);
		}
		issue(L, RULES_I_UNSUPPORTED, file, lno, "%s %s", dir, name ? name : "");
		return;
	}
	if (strcmp(dir, "util_rb_tld") == 0) {
		/* the TLDs that make a host in text a URI (RegistryBoundaries) */
		char *w;
		while ((w = next_word(&p)) != NULL && L->r->ntld < RULES_MAX_TLDS) {
			if (L->r->ntld == L->r->tldcap) {
				L->r->tldcap = L->r->tldcap ? L->r->tldcap * 2 : 256;
				L->r->tld = xreallocarray(L->r->tld, L->r->tldcap, sizeof(*L->r->tld));
			}
			for (char *c = w; *c; c++)
				*c = (char)tolower((unsigned char)*c);
			L->r->tld[L->r->ntld++] = xstrdup(w);
		}
		return;
	}
	if (ignored_directive(dir))
		return;
	issue(L, RULES_I_DIRECTIVE, file, lno, "%s", dir);
}

static int
load_file(struct loader *L, const char *file)
{
	FILE *f;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned lno = 0;
	bool cond[RULES_IF_DEPTH], taken[RULES_IF_DEPTH], in_else[RULES_IF_DEPTH];
	int ncond = 0, i;

	for (i = 0; i < L->depth; i++)
		if (strcmp(L->stack[i], file) == 0) {
			issue(L, RULES_I_FILE, file, 0, "include loop");
			return -1;
		}
	if ((f = fopen(file, "r")) == NULL) {
		issue(L, RULES_I_FILE, file, 0, "%s", strerror(errno));
		return -1;
	}
	L->stack[L->depth++] = file;
	if (L->rep)
		L->rep->files++;
	while ((n = getline(&line, &cap, f)) >= 0) {
		char *s = line, *h;
		lno++;
		if (n > RULES_LINE_MAX) {
			issue(L, RULES_I_SYNTAX, file, lno, "line longer than %d bytes", RULES_LINE_MAX);
			continue;
		}
		while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
			s[--n] = '\0';
		/* comments: '#' at the start or after whitespace; "\#" is a '#' */
		for (h = s; (h = strchr(h, '#')) != NULL; h++) {
			if (h == s || (isspace((unsigned char)h[-1]))) {
				*h = '\0';
				break;
			}
		}
		parse_line(L, s, file, lno, cond, &ncond, taken, in_else);
	}
	free(line);
	fclose(f);
	if (ncond > 0)
		issue(L, RULES_I_SYNTAX, file, lno, "%d if/ifplugin block(s) without endif", ncond);
	L->depth--;
	return 0;
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
load_dir(struct loader *L, const char *dir)
{
	DIR *d;
	struct dirent *de;
	char **names = NULL;
	size_t n = 0, i;
	char path[4200];

	if ((d = opendir(dir)) == NULL) {
		issue(L, RULES_I_FILE, dir, 0, "%s", strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name);
		if (de->d_name[0] == '.')
			continue;
		if (!((l > 3 && strcmp(de->d_name + l - 3, ".cf") == 0) ||
		    (l > 6 && strcmp(de->d_name + l - 6, ".rules") == 0)))
			continue;
		names = xreallocarray(names, n + 1, sizeof(*names));
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof(*names), name_cmp);
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		(void)load_file(L, path);
		free(names[i]);
	}
	free(names);
	return 0;
}

static int
load_path(struct loader *L, const char *path, bool top)
{
	struct stat st;
	glob_t g;
	size_t i;
	int rc = 0;

	if (L->depth >= RULES_INCLUDE_DEPTH) {
		issue(L, RULES_I_FILE, path, 0, "includes nested too deep");
		return -1;
	}
	if (strpbrk(path, "*?[") != NULL) {
		if (glob(path, 0, NULL, &g) != 0) {
			issue(L, RULES_I_FILE, path, 0, "glob matches nothing");
			return -1;
		}
		for (i = 0; i < g.gl_pathc; i++)
			if (load_path(L, g.gl_pathv[i], top) < 0)
				rc = -1;
		globfree(&g);
		return rc;
	}
	if (stat(path, &st) < 0) {
		issue(L, RULES_I_FILE, path, 0, "%s", strerror(errno));
		return -1;
	}
	if (S_ISDIR(st.st_mode))
		return load_dir(L, path);
	return load_file(L, path);
}

/* meta resolution: a meta is bad if it depends (transitively) on a rule
 * that was defined but could not be loaded */
static bool
meta_resolve(struct rules *r, int i, struct rules_report *rep, struct loader *L)
{
	struct rule *ru = &r->v[i];
	size_t k;

	if (ru->mstate == 2)
		return true;
	if (ru->mstate == 3 || ru->mstate == 1) {
		if (ru->mstate == 1) {
			issue(L, RULES_I_SYNTAX, ru->where, 0, "%s: meta rules depend on each other in a loop",
			    ru->name);
			ru->mstate = 3;
		}
		return false;
	}
	ru->mstate = 1;
	for (k = 0; k < ru->nexpr; k++) {
		struct mtok *t = &ru->expr[k];
		int j;
		if (t->op != MO_RULE)
			continue;
		j = rule_find(r, t->name);
		t->idx = -1;
		if (j < 0)
			continue;               /* undefined: 0, as SpamAssassin */
		if (r->v[j].type == RT_NONE) {
			if (r->v[j].unsupported || r->v[j].mentioned_skipped) {
				issue(L, RULES_I_META, ru->where, 0, "%s: depends on %s", ru->name,
				    t->name);
				ru->mstate = 3;
				return false;
			}
			continue;
		}
		if (r->v[j].type == RT_META && !meta_resolve(r, j, rep, L)) {
			if (ru->mstate != 3)
				issue(L, RULES_I_META, ru->where, 0, "%s: depends on %s", ru->name,
				    t->name);
			ru->mstate = 3;
			return false;
		}
		t->idx = j;
	}
	ru->mstate = 2;
	return true;
}

static void
meta_order(struct rules *r, int i, bool *placed)
{
	struct rule *ru = &r->v[i];
	size_t k;

	if (placed[i])
		return;
	placed[i] = true;
	for (k = 0; k < ru->nexpr; k++) {
		int j = ru->expr[k].idx;
		if (ru->expr[k].op == MO_RULE && j >= 0 && r->v[j].type == RT_META &&
		    r->v[j].active)
			meta_order(r, j, placed);
	}
	r->metas[r->nmetas++] = i;
}

struct rules *
rules_load(const char *const *paths, size_t n, struct rules_report *rep, char **err)
{
	struct rules *r = xcalloc(1, sizeof(*r));
	struct rules_report dummy;
	struct loader L;
	size_t i, ok = 0;
	bool *placed;

	*err = NULL;
	if (rep == NULL)
		rep = &dummy;
	memset(rep, 0, sizeof(*rep));
	for (i = 0; i < RULES_HASH; i++)
		r->hash[i] = -1;
	memset(&L, 0, sizeof(L));
	L.r = r;
	L.rep = rep;
	L.cctx = pcre2_compile_context_create(NULL);
	pcre2_set_compile_extra_options(L.cctx, PCRE2_EXTRA_BAD_ESCAPE_IS_LITERAL);
	for (i = 0; i < n; i++)
		if (load_path(&L, paths[i], true) == 0)
			ok++;
	pcre2_compile_context_free(L.cctx);
	if (n > 0 && ok == 0 && rep->files == 0) {
		*err = xstrdup(rep->nissues ? rep->issues[0].text : "no rule file readable");
		char buf[4400];
		snprintf(buf, sizeof(buf), "%s: %s", rep->nissues ? rep->issues[0].where : "",
		    rep->nissues ? rep->issues[0].text : "no rule file readable");
		free(*err);
		*err = xstrdup(buf);
		if (rep == &dummy)
			rules_report_free(&dummy);
		rules_free(&r);
		return NULL;
	}

	/* default scores (as SpamAssassin): 1, T_ rules 0.01, nice negative */
	for (i = 0; i < r->n; i++) {
		struct rule *ru = &r->v[i];
		if (ru->type == RT_NONE)
			continue;
		if (!ru->has_score) {
			ru->score = strncmp(ru->name, "T_", 2) == 0 ? 0.01 : 1.0;
			if (ru->nice)
				ru->score = -ru->score;
		}
	}
	/* a rule SpamAssassin defines in a plugin's branch: our fallback
	 * definition (`if !plugin(...)`) is not what SpamAssassin runs */
	for (i = 0; i < r->n; i++) {
		struct rule *ru = &r->v[i];
		if (ru->type != RT_NONE && ru->plugin_shadowed) {
			issue(&L, RULES_I_UNSUPPORTED, ru->where, 0,
			    "%s: defined differently for a plugin moat does not have", ru->name);
			rule_clear_def(ru);
			ru->unsupported = true;
		}
	}
	for (i = 0; i < r->n; i++)
		if (r->v[i].type == RT_META)
			(void)meta_resolve(r, (int)i, rep, &L);
	r->order = xcalloc(r->n + 1, sizeof(*r->order));
	r->metas = xcalloc(r->n + 1, sizeof(*r->metas));
	for (i = 0; i < r->n; i++) {
		struct rule *ru = &r->v[i];
		if (ru->type == RT_NONE || (ru->type == RT_META && ru->mstate != 2))
			continue;
		if (ru->score == 0) {
			rep->disabled++;
			continue;
		}
		ru->active = true;
		r->nactive++;
		if (ru->type != RT_META)
			r->order[r->norder++] = (int)i;
	}
	/* a meta sees a disabled rule as 0 */
	for (i = 0; i < r->n; i++) {
		struct rule *ru = &r->v[i];
		if (ru->type != RT_META || !ru->active)
			continue;
		for (size_t k = 0; k < ru->nexpr; k++)
			if (ru->expr[k].op == MO_RULE && ru->expr[k].idx >= 0 &&
			    !r->v[ru->expr[k].idx].active)
				ru->expr[k].idx = -1;
	}
	placed = xcalloc(r->n + 1, sizeof(*placed));
	for (i = 0; i < r->n; i++)
		if (r->v[i].type == RT_META && r->v[i].active)
			meta_order(r, (int)i, placed);
	free(placed);
	if (r->ntld > 1)
		qsort(r->tld, r->ntld, sizeof(*r->tld), str_cmp);
	rep->loaded = (unsigned)r->nactive;
	if (rep == &dummy)
		rules_report_free(&dummy);
	return r;
}

size_t
rules_count(const struct rules *r)
{
	return r ? r->nactive : 0;
}

const char *
rules_name_at(const struct rules *r, size_t i)
{
	size_t k;

	for (k = 0; r && k < r->n; k++)
		if (r->v[k].active && i-- == 0)
			return r->v[k].name;
	return NULL;
}

void
rules_free(struct rules **rp)
{
	struct rules *r = *rp;
	size_t i;

	if (r == NULL)
		return;
	for (i = 0; i < r->n; i++) {
		rule_clear_def(&r->v[i]);
		free(r->v[i].name);
		free(r->v[i].desc);
	}
	free(r->v);
	free(r->order);
	free(r->metas);
	for (i = 0; i < r->ntld; i++)
		free(r->tld[i]);
	free(r->tld);
	free(r);
	*rp = NULL;
}

/* ------------------------------------------------------------------ */
/* evaluation */

struct rhdr {
	const char *name;
	size_t namelen;
	char *raw;              /* unfolded ("\r?\n\s+" -> " "), with "\n" */
};

struct ectx {
	const struct rules *r;
	const struct mime_msg *m;
	const char *raw;
	size_t rawlen;
	pcre2_match_data *md;
	pcre2_match_context *mc;
	pcre2_jit_stack *js;
	unsigned limit_hits;
	struct rhdr *rh;
	size_t nrh;
	size_t hdr_end;         /* offset of the body in raw */
	char **lines;           /* rendered body lines */
	size_t *linelens;
	size_t nlines;
	const char **rb;        /* rawbody chunks (point into the mime_msg) */
	size_t *rblens;
	size_t nrb;
	char **uris;            /* uri rules' list: raw URIs and variants */
	size_t *urilens;
	size_t nuris;
};

/* count matches of re in s (at most max); 0 if none */
static unsigned
count_matches(struct ectx *e, const pcre2_code *re, const char *s, size_t len,
    unsigned max)
{
	PCRE2_SIZE off = 0, *ov;
	unsigned n = 0;
	int rc;

	while (n < max && off <= len) {
		rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, 0, e->md, e->mc);
		if (rc < 0) {
			if (rc != PCRE2_ERROR_NOMATCH)
				e->limit_hits++;
			break;
		}
		n++;
		ov = pcre2_get_ovector_pointer(e->md);
		if (ov[1] > ov[0])
			off = ov[1];
		else
			off = ov[1] + 1;        /* empty match: step on */
	}
	return n;
}

static void
parse_raw_headers(struct ectx *e)
{
	const char *p = e->raw, *end = e->raw + e->rawlen;

	while (p < end) {
		const char *ls = p, *colon, *le;
		struct buf v = BUF_INIT;

		if (*p == '\n' || (*p == '\r' && p + 1 < end && p[1] == '\n')) {
			p += *p == '\r' ? 2 : 1;
			break;
		}
		le = memchr(p, '\n', (size_t)(end - p));
		le = le ? le : end;
		colon = memchr(ls, ':', (size_t)(le - ls));
		if (colon == NULL || colon == ls || isspace((unsigned char)*ls)) {
			/* From_ line or garbage: skip */
			p = le < end ? le + 1 : end;
			continue;
		}
		const char *vs = colon + 1;
		while (vs < le && (*vs == ' ' || *vs == '\t'))
			vs++;
		for (;;) {
			const char *ve = le;
			if (ve > vs && ve[-1] == '\r')
				ve--;
			buf_add(&v, vs, (size_t)(ve - vs));
			p = le < end ? le + 1 : end;
			if (p < end && (*p == ' ' || *p == '\t')) {
				buf_addc(&v, ' ');
				while (p < end && (*p == ' ' || *p == '\t'))
					p++;
				vs = p;
				le = memchr(p, '\n', (size_t)(end - p));
				le = le ? le : end;
				continue;
			}
			break;
		}
		buf_addc(&v, '\n');
		e->rh = xreallocarray(e->rh, e->nrh + 1, sizeof(*e->rh));
		e->rh[e->nrh].name = ls;
		e->rh[e->nrh].namelen = (size_t)(colon - ls);
		while (e->rh[e->nrh].namelen > 0 && isspace((unsigned char)ls[e->rh[e->nrh].namelen - 1]))
			e->rh[e->nrh].namelen--;
		e->rh[e->nrh].raw = buf_steal(&v);
		e->nrh++;
	}
	e->hdr_end = (size_t)(p - e->raw);
}

/* Util.pm $header_address_mailre matched on all of s: the length of the
 * address kept (up to a second @), 0 if s is not an address */
static size_t
mail_addr_len(const char *s, size_t len)
{
	size_t i = 0, at, k;

	if (len > 0 && s[0] == '"') {
		for (i = 1; i < len && s[i] != '"'; i++)
			if (s[i] == '\\' && i + 1 < len)
				i++;
		if (i >= len)
			return 0;
		i++;
	} else {
		while (i < len && s[i] != '@' && !isspace((unsigned char)s[i]) &&
		    !strchr("<>()[],:;", s[i]))
			i++;
		if (i == 0)
			return 0;
	}
	if (i >= len || s[i] != '@')
		return 0;
	at = i++;
	if (i < len && s[i] == '[') {
		for (k = i + 1; k < len && (isdigit((unsigned char)s[k]) || s[k] == ':' ||
		    s[k] == '.'); k++)
			;
		if (k + 1 != len || s[k] != ']' || k == i + 1)
			return 0;
	} else {
		if (i == len)
			return 0;
		for (k = i; k < len; k++)
			if (isspace((unsigned char)s[k]) || strchr("\"<>()[],:;", s[k]))
				return 0;
	}
	/* s/^(([^\@]*)\@([^\@]*)).*$/$1/ */
	for (k = at + 1; k < len && s[k] != '@'; k++)
		;
	return k;
}

static void
add_addrs(struct buf *out, const char *v, bool want_name)
{
	/* split on commas outside quotes, <> and () */
	const char *p = v;

	while (*p) {
		const char *s = p, *lt = NULL, *gt = NULL;
		int q = 0, ang = 0, par = 0;
		for (; *p; p++) {
			if (*p == '\\' && p[1]) { p++; continue; }
			if (*p == '"') q = !q;
			else if (!q && *p == '(') par++;
			else if (!q && *p == ')' && par) par--;
			else if (!q && !par && *p == '<') { ang = 1; lt = p; }
			else if (!q && !par && *p == '>' && ang) { ang = 0; gt = p; }
			else if (!q && !par && !ang && *p == ',') break;
		}
		const char *e = p;
		if (*p == ',')
			p++;
		if (lt && gt) {
			/* Util.pm: "<" \S+ ">" up to the last ">" of the element */
			const char *z = e;
			while (z > gt + 1 && isspace((unsigned char)z[-1]))
				z--;
			if (z > gt + 1 && z[-1] == '>')
				gt = z - 1;
		}
		if (want_name) {
			const char *b = s, *f = lt ? lt : e;
			while (b < f && isspace((unsigned char)*b)) b++;
			while (f > b && isspace((unsigned char)f[-1])) f--;
			if (f > b && *b == '"' && f[-1] == '"' && f - b >= 2) { b++; f--; }
			if (lt == NULL) {
				/* addr (Name); a lone phrase is a name unless it
				 * is an address */
				const char *o = memchr(s, '(', (size_t)(e - s));
				const char *c = o ? memchr(o, ')', (size_t)(e - o)) : NULL;
				if (o && c) { b = o + 1; f = c; }
				else if (mail_addr_len(b, (size_t)(f - b)) > 0) { b = f; }
			}
			buf_add(out, b, (size_t)(f - b));
			buf_addc(out, '\n');
		} else {
			const char *b, *f;
			if (lt && gt && gt > lt) {
				b = lt + 1;
				f = gt;
			} else {
				b = s;
				f = e;
				const char *o = memchr(s, '(', (size_t)(e - s));
				if (o)
					f = o;
			}
			while (b < f && isspace((unsigned char)*b)) b++;
			while (f > b && isspace((unsigned char)f[-1])) f--;
			/* Util.pm: only what looks like an address counts
			 * ($header_address_mailre), cut at a second @ */
			size_t al = mail_addr_len(b, (size_t)(f - b));
			if (al > 0) {
				buf_add(out, b, al);
				buf_addc(out, '\n');
			}
		}
	}
}

/* the string a header rule matches; false if the header is absent */
static bool
header_value(struct ectx *e, const struct rule *ru, struct buf *out)
{
	const char *names[4];
	size_t nn = 0, i, k;
	bool found = false;

	buf_reset(out);
	if (ru->hspecial == HS_ALL) {
		if (ru->hmode == HM_RAW) {
			buf_add(out, e->raw, e->hdr_end);
			return e->hdr_end > 0;
		}
		for (i = 0; i < mime_header_count(e->m); i++) {
			const struct mime_header *h = mime_header_at(e->m, i);
			buf_printf(out, "%s: %s\n", h->name, h->value);
		}
		return out->len > 0;
	}
	if (ru->hspecial == HS_TOCC) {
		names[nn++] = "To";
		names[nn++] = "Cc";
	} else if (ru->hspecial == HS_MESSAGEID) {
		names[nn++] = "X-Message-Id";
		names[nn++] = "Resent-Message-Id";
		names[nn++] = "X-Original-Message-ID";
		names[nn++] = "Message-Id";
	} else
		names[nn++] = ru->hdr;

	for (k = 0; k < nn; k++) {
		if (ru->hmode == HM_RAW) {
			for (i = 0; i < e->nrh; i++) {
				if (e->rh[i].namelen != strlen(names[k]) ||
				    ascii_strncasecmp(e->rh[i].name, names[k], e->rh[i].namelen) != 0)
					continue;
				buf_adds(out, e->rh[i].raw);
				found = true;
			}
			continue;
		}
		for (i = 0; i < mime_header_count(e->m); i++) {
			const struct mime_header *h = mime_header_at(e->m, i);
			if (ascii_strcasecmp(h->name, names[k]) != 0)
				continue;
			found = true;
			if (ru->hmode == HM_ADDR || ru->hmode == HM_NAME)
				add_addrs(out, h->value, ru->hmode == HM_NAME);
			else {
				buf_adds(out, h->value);
				buf_addc(out, '\n');
			}
		}
	}
	/* :addr/:name give values without the last newline (as SA's get()) */
	if ((ru->hmode == HM_ADDR || ru->hmode == HM_NAME) && out->len > 0 &&
	    out->data[out->len - 1] == '\n')
		out->len--;
	return found;
}

static void
add_line(struct ectx *e, const char *s, size_t len)
{
	e->lines = xreallocarray(e->lines, e->nlines + 1, sizeof(*e->lines));
	e->linelens = xreallocarray(e->linelens, e->nlines + 1, sizeof(*e->linelens));
	e->lines[e->nlines] = xstrndup(s, len);
	e->linelens[e->nlines] = len;
	e->nlines++;
}

/* split_into_array_of_short_lines(): lines keep their "\n"; longer than
 * 2048 bytes split at the last space before, else at 2048 */
static void
split_short_lines(struct ectx *e, const char *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		const char *nl = memchr(s + i, '\n', len - i);
		size_t l = nl ? (size_t)(nl - (s + i)) + 1 : len - i;
		const char *ls = s + i;
		while (l > RULES_BODY_LINE) {
			size_t cut = 0, j;
			for (j = RULES_BODY_LINE + 1; j-- > 0; )
				if (ls[j] == ' ') {
					cut = j + 1;
					break;
				}
			if (cut == 0)
				cut = RULES_BODY_LINE;
			add_line(e, ls, cut);
			ls += cut;
			l -= cut;
		}
		add_line(e, ls, l);
		i += (size_t)(ls - (s + i)) + l;
	}
}

static bool
is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* SpamAssassin's rendered body: the Subject line, then every text part
 * joined with "\n"; paragraphs (split by blank lines) collapsed to one
 * line with whitespace runs as single spaces */
static void
build_body(struct ectx *e)
{
	struct buf text = BUF_INIT, out = BUF_INIT;
	const char *subj = mime_header_get(e->m, "Subject");
	size_t i;

	for (i = 0; i < mime_text_count(e->m); i++) {
		const struct mime_text *t = mime_text_at(e->m, i);
		if (i > 0)
			buf_addc(&text, '\n');
		buf_add(&text, t->text, t->len);
	}
	if (subj && *subj) {
		buf_adds(&out, subj);
		buf_addc(&out, '\n');
	} else
		buf_addc(&out, '\n');
	/* s/\n+\s*\n+/\0/g; s/\s+/ /g; tr/\0/\n/ */
	for (i = 0; i < text.len; ) {
		char c = text.data[i];
		if (c == '\n') {
			size_t j = i, nls = 0, last_nl = i;
			while (j < text.len && is_ws(text.data[j])) {
				if (text.data[j] == '\n') {
					nls++;
					last_nl = j;
				}
				j++;
			}
			if (nls >= 2) {
				/* \n+\s*\n+ consumes through the last newline; the
				 * whitespace after it collapses to one space */
				buf_addc(&out, '\n');
				if (last_nl + 1 < j)
					buf_addc(&out, ' ');
			} else
				buf_addc(&out, ' ');
			i = j;
			continue;
		}
		if (is_ws(c)) {
			while (i < text.len && is_ws(text.data[i]) && text.data[i] != '\n')
				i++;
			if (i < text.len && text.data[i] == '\n')
				continue;       /* the newline logic decides */
			buf_addc(&out, ' ');
			continue;
		}
		buf_addc(&out, c);
		i++;
	}
	split_short_lines(e, out.data ? out.data : "", out.len);
	buf_free(&text);
	buf_free(&out);
}

static void
add_chunk(struct ectx *e, const char *s, size_t len)
{
	e->rb = xreallocarray(e->rb, e->nrb + 1, sizeof(*e->rb));
	e->rblens = xreallocarray(e->rblens, e->nrb + 1, sizeof(*e->rblens));
	e->rb[e->nrb] = s;
	e->rblens[e->nrb] = len;
	e->nrb++;
}

static ssize_t
find_from(const char *s, size_t len, size_t from, char c)
{
	const char *p;

	if (from >= len)
		return -1;
	p = memchr(s + from, c, len - from);
	return p ? p - s : -1;
}

/* Message.pm split_into_array_of_short_paragraphs(): a part longer than
 * 2048 bytes in chunks cut after a "\n", else a ">", else a " " found at
 * 2048 bytes or more from the chunk start, chunks at most 4096 bytes */
void
rules_split_paragraphs(const char *s, size_t len,
    void (*cb)(void *, const char *, size_t), void *arg)
{
	const size_t M = RULES_BODY_LINE;
	size_t ofs = 0;
	ssize_t j;

	if (len <= M) {
		cb(arg, s, len);
		return;
	}
	for (; len - ofs > 2 * M; ofs = (size_t)j + 1) {
		j = find_from(s, len, ofs + M, '\n');
		if (j < 0 || (size_t)j - ofs + 1 > 2 * M) {
			j = find_from(s, len, ofs + M, '>');
			if (j < 0 || (size_t)j - ofs + 1 > 2 * M) {
				j = find_from(s, len, ofs + M, ' ');
				if (j < 0 || (size_t)j - ofs + 1 > 2 * M)
					j = (ssize_t)(ofs + M);
			}
		}
		cb(arg, s + ofs, (size_t)j - ofs + 1);
	}
	if (ofs < len)
		cb(arg, s + ofs, len - ofs);
}

static void
chunk_cb(void *arg, const char *s, size_t len)
{
	add_chunk(arg, s, len);
}

/* get_decoded_body_text_array(): every text leaf (text/calendar
 * excepted; attachments too) transfer-decoded, in its own charset, HTML
 * not rendered, cut into short paragraphs; each matched on its own */
static void
build_rawbody(struct ectx *e)
{
	size_t i;

	for (i = 0; i < mime_text_count(e->m); i++) {
		const struct mime_text *t = mime_text_at(e->m, i);
		if (t->raw == NULL || strcmp(t->type, "text/calendar") == 0 ||
		    strcmp(t->type, "message/rfc822") == 0)
			continue;
		rules_split_paragraphs(t->raw, t->rawlen, chunk_cb, e);
	}
	for (i = 0; i < mime_attachment_count(e->m); i++) {
		const struct mime_attachment *a = mime_attachment_at(e->m, i);
		if (a->data == NULL || strncmp(a->type, "text/", 5) != 0 ||
		    strcmp(a->type, "text/calendar") == 0)
			continue;
		rules_split_paragraphs((const char *)a->data, a->size, chunk_cb, e);
	}
}

/* ---- URIs: Util.pm uri_list_canonicalize() ---- */

#define URI_VARIANT_DEPTH 4     /* redirector URIs followed */

static void
url_encode(struct buf *out, const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '%' && i + 2 < len && isxdigit((unsigned char)s[i + 1]) &&
		    isxdigit((unsigned char)s[i + 2])) {
			char a = s[i + 1], b = s[i + 2];
			/* kept: %20, %7f and [0189a-f]X (controls, 8-bit) */
			bool keep = (a == '2' && b == '0') ||
			    (a == '7' && (b == 'f' || b == 'F')) ||
			    strchr("0189abcdefABCDEF", a) != NULL;
			if (!keep && a >= '2' && a <= '7') {
				char h[3] = { a, b, 0 };
				buf_addc(out, (char)strtoul(h, NULL, 16));
			} else
				buf_add(out, s + i, 3);
			i += 2;
			continue;
		}
		if (c <= 0x20 || c >= 0x7f || c == '"' || c == '%' || c == '<' || c == '>')
			buf_printf(out, "%%%02x", c);
		else
			buf_addc(out, (char)c);
	}
}

static bool
has_pct_hex(const char *s, size_t len)
{
	for (size_t i = 0; i + 3 <= len; i++)
		if (s[i] == '%' && isxdigit((unsigned char)s[i + 1]) &&
		    isxdigit((unsigned char)s[i + 2]))
			return true;
	return false;
}

/* &#NN; / &#xNN; for printable ASCII, and the dot look-alikes */
static void
entity_fix(struct buf *out, const char *s, size_t len)
{
	static const char *dots[] = { "x2e", "12290", "x3002", "65294", "xff0e",
	    "65377", "xff61" };

	for (size_t i = 0; i < len; i++) {
		if (s[i] == '&' && i + 2 < len && s[i + 1] == '#') {
			const char *semi = memchr(s + i, ';', len - i);
			size_t k;
			if (semi && semi - (s + i) < 16) {
				size_t nl = (size_t)(semi - (s + i + 2));
				const char *num = s + i + 2;
				bool done = false;
				for (k = 0; k < sizeof(dots) / sizeof(dots[0]); k++)
					if (strlen(dots[k]) == nl &&
					    ascii_strncasecmp(num, dots[k], nl) == 0) {
						buf_addc(out, '.');
						done = true;
						break;
					}
				if (!done && nl > 0) {
					bool hex = num[0] == 'x';
					unsigned long v = 0;
					size_t d = hex ? 1 : 0;
					bool ok = d < nl;
					for (k = d; k < nl && ok; k++)
						ok = hex ? isxdigit((unsigned char)num[k]) :
						    isdigit((unsigned char)num[k]);
					if (ok) {
						char tmp[16];
						memcpy(tmp, num + d, nl - d);
						tmp[nl - d] = '\0';
						v = strtoul(tmp, NULL, hex ? 16 : 10);
						if (v >= 33 && v <= 126 && !(hex && v == 0x7f)) {
							buf_addc(out, (char)v);
							done = true;
						}
					}
				}
				if (done) {
					i = (size_t)(semi - s);
					continue;
				}
			}
		}
		buf_addc(out, s[i]);
	}
}

static void
emit3(void (*cb)(void *, const char *, size_t), void *arg, const char *a,
    size_t al, const char *b, size_t bl, const char *c, size_t cl)
{
	struct buf t = BUF_INIT;

	buf_add(&t, a, al);
	buf_add(&t, b, bl);
	buf_add(&t, c, cl);
	cb(arg, t.data ? t.data : "", t.len);
	buf_free(&t);
}

/* one IPv4 octet as Util.pm rewrites it (hex, octal, leading zeros) */
static void
octet_fix(struct buf *out, const char *s, size_t len)
{
	char tmp[64];
	size_t i = 0;

	if (len >= sizeof(tmp))
		len = sizeof(tmp) - 1;
	memcpy(tmp, s, len);
	tmp[len] = '\0';
	if (len > 2 && tmp[0] == '0' && (tmp[1] == 'x' || tmp[1] == 'X') &&
	    isxdigit((unsigned char)tmp[2])) {
		size_t e = 2;
		while (isxdigit((unsigned char)tmp[e]))
			e++;
		char h[64];
		memcpy(h, tmp + 2, e - 2);
		h[e - 2] = '\0';
		buf_printf(out, "%lu%s", strtoul(h, NULL, 16) & 0xffffffffUL, tmp + e);
		return;
	}
	if (tmp[0] == '0') {
		while (tmp[i] == '0')
			i++;
		/* 0+([1-3][0-7]{0,2}|[4-7][0-7]?)\b */
		size_t e = i;
		if (tmp[e] >= '1' && tmp[e] <= '3') {
			e++;
			while (e - i < 3 && tmp[e] >= '0' && tmp[e] <= '7')
				e++;
		} else if (tmp[e] >= '4' && tmp[e] <= '7') {
			e++;
			if (tmp[e] >= '0' && tmp[e] <= '7')
				e++;
		}
		if (e > i && !isalnum((unsigned char)tmp[e]) && tmp[e] != '_') {
			char o[8];
			memcpy(o, tmp + i, e - i);
			o[e - i] = '\0';
			buf_printf(out, "%lu%s", strtoul(o, NULL, 8), tmp + e);
			return;
		}
		buf_adds(out, tmp + i);
		return;
	}
	buf_adds(out, tmp);
}

static void
uri_variants(const char *in, size_t inlen,
    void (*cb)(void *, const char *, size_t), void *arg, unsigned depth)
{
	struct buf u = BUF_INIT, n = BUF_INIT, t = BUF_INIT;
	size_t i, len;
	const char *s;

	for (i = 0; i < inlen; i++)
		if (in[i] != '\n' && in[i] != '\r')
			buf_addc(&u, in[i]);
	s = u.data ? u.data : "";
	len = u.len;
	while (len && isspace((unsigned char)*s))
		s++, len--;
	while (len && isspace((unsigned char)s[len - 1]))
		len--;
	if (len <= 1 || *s == '#' || *s == '?' || *s == '&' ||
	    (*s == '/' && s[1] != '/'))
		goto out;
	cb(arg, s, len);

	{
		const char *colon = memchr(s, ':', len);
		const char *at = memchr(s, '@', len);
		if (ascii_prefix_ci(s, len, "mailto:") || (at && (!colon || colon > at))) {
			const char *q = at ? memchr(at, '?', len - (size_t)(at - s)) : NULL;
			if (at && at > s && q && q > at + 1 &&
			    memchr(s, '?', (size_t)(at - s)) == NULL)
				cb(arg, s, (size_t)(q - s));
			if (at && at > s) {
				size_t k = (size_t)(at - s) + 1;
				while (k < len && s[k] != '?' && s[k] != '&')
					k++;
				if (k < len && s[k] == '&' && k > (size_t)(at - s) + 1)
					cb(arg, s, k);
			}
			goto out;
		}
	}

	/* tr{\\}{/}, s{^(https?:)/{0,2}}{$1//}i */
	for (i = 0; i < len; i++)
		buf_addc(&t, s[i] == '\\' ? '/' : s[i]);
	{
		size_t pl = 0;
		if (ascii_prefix_ci(t.data, t.len, "http:"))
			pl = 5;
		else if (ascii_prefix_ci(t.data, t.len, "https:"))
			pl = 6;
		if (pl) {
			size_t sl = 0;
			while (pl + sl < t.len && sl < 2 && t.data[pl + sl] == '/')
				sl++;
			buf_add(&n, t.data, pl);
			buf_adds(&n, "//");
			buf_add(&n, t.data + pl + sl, t.len - pl - sl);
		} else
			buf_add(&n, t.data, t.len);
	}
	if (has_pct_hex(n.data, n.len)) {
		buf_reset(&t);
		url_encode(&t, n.data, n.len);
		buf_reset(&n);
		buf_add(&n, t.data, t.len);
	}
	{
		/* no scheme: http:// (ftp:// for ftp.) */
		size_t k = 0;
		while (k < n.len && (isalnum((unsigned char)n.data[k]) ||
		    n.data[k] == '-' || n.data[k] == '_'))
			k++;
		if (!(k > 0 && k < n.len && n.data[k] == ':')) {
			buf_reset(&t);
			buf_adds(&t, n.len >= 4 && memcmp(n.data, "ftp.", 4) == 0 ?
			    "ftp://" : "http://");
			buf_add(&t, n.data, n.len);
			buf_reset(&n);
			buf_add(&n, t.data, t.len);
		}
	}
	{
		/* s{^(https?://[^/?#]+)([?#])}{$1/$2}i */
		size_t pl = ascii_prefix_ci(n.data, n.len, "http://") ? 7 :
		    ascii_prefix_ci(n.data, n.len, "https://") ? 8 : 0;
		if (pl) {
			size_t k = pl;
			while (k < n.len && n.data[k] != '/' && n.data[k] != '?' &&
			    n.data[k] != '#')
				k++;
			if (k > pl && k < n.len && n.data[k] != '/') {
				buf_reset(&t);
				buf_add(&t, n.data, k);
				buf_addc(&t, '/');
				buf_add(&t, n.data + k, n.len - k);
				buf_reset(&n);
				buf_add(&n, t.data, t.len);
			}
		}
	}
	buf_reset(&t);
	entity_fix(&t, n.data, n.len);
	buf_reset(&n);
	buf_add(&n, t.data ? t.data : "", t.len);
	if (n.len != len || memcmp(n.data, s, len) != 0)
		cb(arg, n.data, n.len);

	{
		/* ^(https?://)([^@/?#]*@)?([^/?#:]+)((?::(\d*))?.*)$ */
		const char *p = n.data;
		size_t pl = ascii_prefix_ci(p, n.len, "http://") ? 7 :
		    ascii_prefix_ci(p, n.len, "https://") ? 8 : 0;
		size_t as = pl, ae, hs, he, k;
		bool http, has_port = false;
		char host[256];
		size_t hl;

		if (pl == 0)
			goto out;
		http = memcmp(p, "http://", 7) == 0;
		for (k = pl; k < n.len && p[k] != '@' && p[k] != '/' && p[k] != '?' &&
		    p[k] != '#'; k++)
			;
		ae = (k < n.len && p[k] == '@') ? k + 1 : as;
		hs = ae;
		for (he = hs; he < n.len && p[he] != '/' && p[he] != '?' &&
		    p[he] != '#' && p[he] != ':'; he++)
			;
		if (he == hs || he - hs >= sizeof(host))
			goto out;
		if (he < n.len && p[he] == ':') {
			k = he + 1;
			while (k < n.len && isdigit((unsigned char)p[k]))
				k++;
			has_port = true;
		}
		const char *rest = p + he;
		size_t restl = n.len - he;
		char port[8] = "";
		if (has_port) {
			size_t dl = 0;
			while (he + 1 + dl < n.len && isdigit((unsigned char)p[he + 1 + dl]))
				dl++;
			if (dl < sizeof(port)) {
				memcpy(port, p + he + 1, dl);
				port[dl] = '\0';
			}
			/* s/^:80\b// (http://) or s/^:443\b// */
			const char *want = http ? "80" : "443";
			size_t wl = strlen(want);
			if (restl >= 1 + wl && memcmp(rest + 1, want, wl) == 0 &&
			    (restl == 1 + wl || !(isalnum((unsigned char)rest[1 + wl]) ||
			    rest[1 + wl] == '_')))
				emit3(cb, arg, p, pl, p + hs, he - hs, rest + 1 + wl,
				    restl - 1 - wl);
		} else
			snprintf(port, sizeof(port), "%s", http ? "80" : "443");
		memcpy(host, p + hs, he - hs);
		hl = he - hs;
		host[hl] = '\0';
		/* control characters and blanks removed */
		{
			size_t w = 0;
			for (k = 0; k < hl; k++)
				if ((unsigned char)host[k] > 0x20)
					host[w++] = host[k];
			if (w != hl) {
				hl = w;
				host[hl] = '\0';
				emit3(cb, arg, p, pl, host, hl, rest, restl);
			}
		}
		/* hard-coded redirector: an http URL in the rest */
		if (depth < URI_VARIANT_DEPTH) {
			for (k = 0; k + 5 <= restl; k++) {
				size_t r = k, e;
				if (!(ascii_prefix_ci(rest + k, restl - k, "http:") ||
				    ascii_prefix_ci(rest + k, restl - k, "https:")))
					continue;
				r = k + (rest[k + 4] == ':' ? 5 : 6);
				for (e = r; e < restl && e - r < 2 && rest[e] == '/'; e++)
					;
				size_t st = e;
				while (e < restl && rest[e] != '&' && rest[e] != '#')
					e++;
				if (e > st && memchr(rest + k, '.', e - k) != NULL)
					uri_variants(rest + k, e - k, cb, arg, depth + 1);
				break;
			}
		}
		/* trailing non-alphanumerics of the host */
		k = hl;
		while (k > 0 && !isalnum((unsigned char)host[k - 1]))
			k--;
		if (k != hl && k > 0) {
			hl = k;
			host[hl] = '\0';
			emit3(cb, arg, p, pl, host, hl, rest, restl);
		}
		/* numeric hosts */
		{
			size_t dots = 0, d[3];
			bool ok = hl > 0;
			for (k = 0; k < hl && ok; k++) {
				if (host[k] == '.') {
					if (dots == 3) { ok = false; break; }
					d[dots++] = k;
				} else if (!isalnum((unsigned char)host[k]))
					ok = false;
			}
			if (ok && dots == 3) {
				/* each chunk (0x[0-9a-f]+|\d+) */
				size_t st = 0;
				bool num = true;
				for (size_t c = 0; c < 4 && num; c++) {
					size_t en = c < 3 ? d[c] : hl, q = st;
					if (en - st > 2 && host[st] == '0' && (host[st + 1] | 0x20) == 'x') {
						for (q = st + 2; q < en; q++)
							if (!isxdigit((unsigned char)host[q]))
								num = false;
					} else {
						if (en == st)
							num = false;
						for (; q < en; q++)
							if (!isdigit((unsigned char)host[q]))
								num = false;
					}
					st = en + 1;
				}
				if (num) {
					struct buf h = BUF_INIT;
					st = 0;
					for (size_t c = 0; c < 4; c++) {
						size_t en = c < 3 ? d[c] + 1 : hl;
						octet_fix(&h, host + st, en - st);
						st = en;
					}
					emit3(cb, arg, p, pl, h.data ? h.data : "", h.len, rest, restl);
					buf_free(&h);
					goto out;
				}
			}
			if (dots == 0 && hl > 0) {
				bool alldig = true, hex = hl > 2 && host[0] == '0' &&
				    (host[1] | 0x20) == 'x';
				for (k = hex ? 2 : 0; k < hl; k++)
					if (hex ? !isxdigit((unsigned char)host[k]) :
					    !isdigit((unsigned char)host[k]))
						alldig = false;
				if (alldig && (hex || hl <= 20)) {
					unsigned long long v;
					char ip[32];
					if (hex) {
						size_t from = hl - 2 > 8 ? hl - 8 : 2;
						v = strtoull(host + from, NULL, 16);
					} else
						v = strtoull(host, NULL, 10);
					v &= 0xffffffffULL;
					snprintf(ip, sizeof(ip), "%llu.%llu.%llu.%llu",
					    (v >> 24) & 255, (v >> 16) & 255, (v >> 8) & 255, v & 255);
					emit3(cb, arg, p, pl, ip, strlen(ip), rest, restl);
					goto out;
				}
			}
		}
		/* single-label host: the www.NAME.com guess */
		if (http && ae == as && strcmp(port, "80") == 0) {
			char lh[256];
			for (k = 0; k <= hl; k++)
				lh[k] = (char)tolower((unsigned char)host[k]);
			const char *lab = lh;
			if (strncmp(lab, "www.", 4) == 0)
				lab += 4;
			if (strcmp(lh, "localhost") != 0 && *lab && strchr(lab, '.') == NULL) {
				struct buf h = BUF_INIT;
				buf_adds(&h, "www.");
				buf_adds(&h, lab);
				buf_adds(&h, ".com");
				emit3(cb, arg, p, pl, h.data, h.len, rest, restl);
				buf_free(&h);
			}
		}
	}
out:
	buf_free(&u);
	buf_free(&n);
	buf_free(&t);
}

void
rules_uri_variants(const char *uri, size_t len,
    void (*cb)(void *, const char *, size_t), void *arg)
{
	uri_variants(uri, len, cb, arg, 0);
}

static void
uri_cb(void *arg, const char *s, size_t len)
{
	struct ectx *e = arg;

	for (size_t i = 0; i < e->nuris; i++)
		if (e->urilens[i] == len && memcmp(e->uris[i], s, len) == 0)
			return;
	if (e->nuris >= RULES_MAX_URIS)
		return;
	e->uris = xreallocarray(e->uris, e->nuris + 1, sizeof(*e->uris));
	e->urilens = xreallocarray(e->urilens, e->nuris + 1, sizeof(*e->urilens));
	e->uris[e->nuris] = xstrndup(s, len);
	e->urilens[e->nuris++] = len;
}


/* RegistryBoundaries.pm uri_to_domain() != undef: the URI's host is an IP
 * address or a name under a known TLD (util_rb_tld) */
static bool
uri_has_domain(const struct rules *r, const char *uri, size_t len)
{
	char h[256];
	size_t hl = 0, i = 0, k, end;
	const char *at;

	if (ascii_prefix_ci(uri, len, "javascript:") || ascii_prefix_ci(uri, len, "cid:") ||
	    ascii_prefix_ci(uri, len, "file:"))
		return false;
	if (ascii_prefix_ci(uri, len, "mailto:")) {
		const char *q = memchr(uri, '?', len);
		end = q ? (size_t)(q - uri) : len;
		at = NULL;
		for (k = 7; k < end; k++)
			if (uri[k] == '@') {
				if (at)
					return false;   /* several @ */
				at = uri + k;
			}
		if (at == NULL)
			return false;
		i = (size_t)(at - uri) + 1;
	} else {
		while (i < len && isalpha((unsigned char)uri[i]))
			i++;
		if (i < len && uri[i] == ':') {
			i++;
			for (k = 0; k < 2 && i < len && uri[i] == '/'; k++)
				i++;
		} else
			i = 0;
		for (end = i; end < len && uri[end] != '/' && uri[end] != '?' &&
		    uri[end] != '#'; end++)
			;
		for (k = end; k > i; k--)
			if (uri[k - 1] == '@') {
				i = k;
				break;
			}
		k = end;
		while (k > i && isdigit((unsigned char)uri[k - 1]))
			k--;
		if (k > i && uri[k - 1] == ':')
			end = k - 1;
	}
	if (end - i >= sizeof(h) || end == i)
		return false;
	for (k = i; k < end; k++)
		h[hl++] = (char)tolower((unsigned char)uri[k]);
	h[hl] = '\0';
	/* escaped printable characters: not a host */
	for (k = 0; k + 2 < hl; k++)
		if (h[k] == '%' && ((h[k + 1] == '2' && strchr("123456789abcdef", h[k + 2])) ||
		    (h[k + 1] >= '3' && h[k + 1] <= '6' && isxdigit((unsigned char)h[k + 2])) ||
		    (h[k + 1] == '7' && strchr("0123456789abcde", h[k + 2]))))
			return false;
	{
		/* IPv4 dotted quad or IPv6 */
		unsigned d = 0, dig = 0;
		bool ip = true;
		for (k = 0; k < hl && ip; k++) {
			if (h[k] == '.') {
				ip = dig > 0;
				d++;
				dig = 0;
			} else if (isdigit((unsigned char)h[k]) && dig < 3)
				dig++;
			else
				ip = false;
		}
		if ((ip && d == 3 && dig > 0) || (strchr(h, ':') && h[0] == '['))
			return true;
	}
	/* is_fqdn_valid() and is_domain_valid(): labels, a known TLD */
	{
		const char *dot = strrchr(h, '.');
		char *key;
		if (dot == NULL || dot[1] == '\0' || strstr(h, "..") || h[0] == '.')
			return false;
		for (k = 0; k < hl; k++)
			if (!isalnum((unsigned char)h[k]) && h[k] != '-' && h[k] != '.' &&
			    h[k] != '_' && (unsigned char)h[k] < 0x80)
				return false;
		key = (char *)(dot + 1);
		return bsearch(&key, r->tld, r->ntld, sizeof(*r->tld), str_cmp) != NULL;
	}
}

struct uvar {
	char **v;
	size_t n;
};

static void
uvar_cb(void *arg, const char *s, size_t len)
{
	struct uvar *u = arg;

	if (u->n >= RULES_MAX_URIS)
		return;
	u->v = xreallocarray(u->v, u->n + 1, sizeof(*u->v));
	u->v[u->n++] = xstrndup(s, len);
}

/* one URI of the message into the uri rules' list: a URI found in text
 * only counts when a variant has a valid domain (add_uri_detail_list()
 * with valid_domain); without util_rb_tld lines every URI counts */
static void
add_message_uri(struct ectx *e, const char *u, bool parsed)
{
	struct uvar uv = { NULL, 0 };
	bool keep = !parsed || e->r->ntld == 0;
	size_t i;

	rules_uri_variants(u, strlen(u), uvar_cb, &uv);
	for (i = 0; i < uv.n && !keep; i++)
		keep = uri_has_domain(e->r, uv.v[i], strlen(uv.v[i]));
	for (i = 0; i < uv.n; i++) {
		if (keep)
			uri_cb(e, uv.v[i], strlen(uv.v[i]));    /* no NULs: xstrndup */
		free(uv.v[i]);
	}
	free(uv.v);
}


static unsigned
run_rule(struct ectx *e, const struct rule *ru, struct buf *tmp)
{
	unsigned max = ru->multiple ? (ru->maxhits ? ru->maxhits : RULES_MAX_HITS) : 1;
	unsigned n = 0;
	size_t i;

	switch (ru->type) {
	case RT_HEADER: {
		bool found = header_value(e, ru, tmp);
		if (ru->exists)
			return found ? 1 : 0;
		if (!found) {
			buf_reset(tmp);
			if (ru->unset)
				buf_adds(tmp, ru->unset);
		}
		n = count_matches(e, ru->re, tmp->data ? tmp->data : "", tmp->len,
		    ru->negate ? 1 : max);
		if (ru->negate)
			return n ? 0 : 1;
		return n;
	}
	case RT_BODY:
		for (i = 0; i < e->nlines && n < max; i++)
			n += count_matches(e, ru->re, e->lines[i], e->linelens[i], max - n);
		return n;
	case RT_RAWBODY:
		for (i = 0; i < e->nrb && n < max; i++)
			n += count_matches(e, ru->re, e->rb[i], e->rblens[i], max - n);
		return n;
	case RT_FULL:
		return count_matches(e, ru->re, e->raw, e->rawlen, max);
	case RT_URI:
		for (i = 0; i < e->nuris && n < max; i++)
			n += count_matches(e, ru->re, e->uris[i], e->urilens[i], max - n);
		return n;
	default:
		return 0;
	}
}

static int
hit_cmp(const void *a, const void *b)
{
	return strcmp(((const struct rules_hit *)a)->name, ((const struct rules_hit *)b)->name);
}

int
rules_eval(const struct rules *r, const struct mime_msg *m, const char *raw,
    size_t rawlen, struct rules_hits *out)
{
	struct ectx e;
	struct buf tmp = BUF_INIT;
	double *vals;
	size_t i;

	memset(out, 0, sizeof(*out));
	if (r == NULL || m == NULL)
		return 0;
	memset(&e, 0, sizeof(e));
	e.r = r;
	e.m = m;
	e.raw = raw ? raw : "";
	e.rawlen = raw ? rawlen : 0;
	e.md = pcre2_match_data_create(1, NULL);
	e.mc = pcre2_match_context_create(NULL);
	e.js = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
	if (e.md == NULL || e.mc == NULL || e.js == NULL) {
		pcre2_match_data_free(e.md);
		pcre2_match_context_free(e.mc);
		pcre2_jit_stack_free(e.js);
		return -1;
	}
	pcre2_set_match_limit(e.mc, RULES_MATCH_LIMIT);
	pcre2_set_depth_limit(e.mc, RULES_DEPTH_LIMIT);
	pcre2_set_heap_limit(e.mc, RULES_HEAP_LIMIT);
	pcre2_jit_stack_assign(e.mc, NULL, e.js);
	parse_raw_headers(&e);
	build_body(&e);
	build_rawbody(&e);
	for (i = 0; i < mime_uri_count(m); i++)
		add_message_uri(&e, mime_uri_at(m, i), mime_uri_parsed(m, i));

	vals = xcalloc(r->n + 1, sizeof(*vals));
	for (i = 0; i < r->norder; i++) {
		const struct rule *ru = &r->v[r->order[i]];
		vals[r->order[i]] = run_rule(&e, ru, &tmp);
	}
	for (i = 0; i < r->nmetas; i++) {
		const struct rule *ru = &r->v[r->metas[i]];
		vals[r->metas[i]] = meta_eval(ru->expr, ru->nexpr, vals) != 0 ? 1 : 0;
	}
	for (i = 0; i < r->n; i++) {
		const struct rule *ru = &r->v[i];
		struct rules_hit *h;
		if (!ru->active || vals[i] == 0 || strncmp(ru->name, "__", 2) == 0)
			continue;
		if (out->n == out->cap) {
			out->cap = out->cap ? out->cap * 2 : 16;
			out->v = xreallocarray(out->v, out->cap, sizeof(*out->v));
		}
		h = &out->v[out->n++];
		h->name = ru->name;
		h->desc = ru->desc ? ru->desc : "";
		h->score = ru->score;
		h->count = (unsigned)vals[i];
		out->total += ru->score;
	}
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(*out->v), hit_cmp);
	out->limit_hits = e.limit_hits;

	free(vals);
	buf_free(&tmp);
	for (i = 0; i < e.nrh; i++)
		free(e.rh[i].raw);
	free(e.rh);
	for (i = 0; i < e.nlines; i++)
		free(e.lines[i]);
	free(e.lines);
	free(e.linelens);
	free(e.rb);
	free(e.rblens);
	for (i = 0; i < e.nuris; i++)
		free(e.uris[i]);
	free(e.uris);
	free(e.urilens);
	pcre2_match_data_free(e.md);
	pcre2_match_context_free(e.mc);
	pcre2_jit_stack_free(e.js);
	return 0;
}

void
rules_hits_free(struct rules_hits *h)
{
	if (h == NULL)
		return;
	free(h->v);
	memset(h, 0, sizeof(*h));
}
