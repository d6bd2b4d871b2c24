/*
 * imap.c - the IMAP server sessions (IMAP4rev1 core + IDLE, UIDPLUS, MOVE,
 * NAMESPACE, LITERAL+, ID, ENABLE, SPECIAL-USE, SASL-IR, UNSELECT).
 *
 * Runs in: the worker process.  Sessions live on the event loop; every
 * command that touches the disk is ONE pool job (sync + the command's
 * effect + formatting its untagged output), and the session reads nothing
 * while it is out.  Untrusted input: every byte from the client; the
 * message files are parsed too (headers, MIME) with bounded loops.
 * Limits: line IMAP_MAX_LINE, literal IMAP_MAX_LITERAL (APPEND: the
 * message-size-limit), bad commands IMAP_MAX_BAD, idle autologout 30 min
 * (RFC 3501 5.4; 2 min before login), FETCH output produced in chunks of
 * about IMAP_FETCH_CHUNK bytes; the next chunk is made while the last one
 * is written, but never with more than 2 x IMAP_FETCH_CHUNK unsent.
 *
 * The session keeps the client's view of the mailbox (uid + flags per
 * sequence number).  After each job it reconciles the view with the
 * synced mailbox: EXPUNGE (not during FETCH/STORE/SEARCH, RFC 3501
 * 7.4.1), EXISTS/RECENT for new mail, FETCH FLAGS for changes made by
 * other sessions.  IDLE polls the mailbox every IMAP_IDLE_POLL seconds.
 */
#include "config.h"
#include "imap.h"
#include "engine.h"
#include "bayes.h"
#include "imap_parse.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "net.h"
#include "mailbox.h"
#include "metrics.h"
#include "pool.h"
#include "tls.h"
#include "util.h"
#include "worker.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define IMAP_MAX_LINE       65536
#define IMAP_MAX_LITERAL    65536
#define IMAP_MAX_BAD        10
#define IMAP_TIMEOUT        1800
#define IMAP_TIMEOUT_NOAUTH 120
#define IMAP_IDLE_POLL      2
#define IMAP_FETCH_CHUNK    (1024u * 1024)
#define IMAP_MAX_OUT        (1024 * 1024)
#define IMAP_HDR_MAX        (1024 * 1024)

enum istate { I_NOAUTH, I_AUTH, I_SELECTED, I_LOGOUT };

struct fitem {
	int     kind;
	bool    peek;
	int     sect;               /* S_ALL, S_HEADER, S_TEXT, S_FIELDS, S_FIELDS_NOT, S_MIME */
	char    part[64];           /* "1.2" or "" */
	char  **fields;
	size_t  nfields;
	bool    partial;
	bool    implicit;           /* FLAGS added because \Seen is set: only if it changes */
	uint32_t poff, plen;
	char   *name;               /* as echoed: "BODY[HEADER.FIELDS (FROM)]" */
};
enum { F_FLAGS, F_UID, F_INTERNALDATE, F_SIZE, F_ENVELOPE, F_BODY, F_BODYSTRUCTURE,
	F_SECTION, F_RFC822, F_RFC822_HEADER, F_RFC822_TEXT };
enum { S_ALL, S_HEADER, S_TEXT, S_FIELDS, S_FIELDS_NOT, S_MIME };

/* search program */
enum { Q_ALL, Q_KEYWORD, Q_UNKEYWORD, Q_FLAG, Q_NOFLAG, Q_NEW, Q_OLD, Q_HEADER, Q_BODY, Q_TEXT, Q_BEFORE, Q_ON, Q_SINCE,
	Q_SENTBEFORE, Q_SENTON, Q_SENTSINCE, Q_LARGER, Q_SMALLER, Q_UID, Q_SEQ, Q_NOT, Q_OR, Q_AND, Q_NONE };
struct query {
	int     op;
	unsigned flag;
	char   *name, *value;
	time_t  t;
	long long n;
	struct imap_seqset set;
	struct query *kids;
	size_t  nkids;
};

struct job {
	int     op;
	char    tag[128];
	bool    uid;                /* UID command form */
	char   *a1, *a2;
	/* targets: (seq, uid) from the view */
	uint32_t *seqs, *uids;
	size_t  n;
	struct fitem *items;
	size_t  nitems;
	bool    setseen;
	char    mode;
	unsigned flags;
	char  **kw;                 /* keyword names (STORE, APPEND, SEARCH) */
	size_t  nkw;
	bool    silent;
	struct query q;
	struct mbox *mb;            /* the session's, or a new one (SELECT) */
	char   *data;               /* APPEND */
	size_t  datalen;
	time_t  date;
	size_t  next;               /* FETCH chunking: next target */
	bool    statusitems[6];
	/* results */
	struct buf out;
	int     result;             /* 0 OK, 1 NO, 2 BAD */
	char   *text;               /* tagged text after OK/NO */
	uint32_t *res;
	size_t  nres;
};

enum { J_LOGIN, J_SELECT, J_POLL, J_FETCH, J_STORE, J_SEARCH, J_COPY, J_MOVE, J_EXPUNGE, J_CLOSE,
	J_LIST, J_LSUB, J_STATUS, J_CREATE, J_DELETE, J_RENAME, J_SUB, J_UNSUB, J_APPEND };

struct imap {
	char    sid[NET_SID_SIZE];
	struct bufferevent *bev;
	const struct listen_conf *listen;
	char    ip[INET6_ADDRSTRLEN];
	enum istate state;
	bool    tls;
	bool    busy;               /* a job is out */
	bool    dead;
	bool    closing;
	bool    starttls;           /* switch to TLS when the output is flushed */
	bool    idling;
	bool    fetchmore;          /* resubmit the FETCH job when the output drains */
	bool    authcont;           /* waiting for an AUTHENTICATE PLAIN response */
	bool    delaying;           /* a failed login's answer is being held back */
	char    authtag[128];
	char    idletag[128];
	int     nbad;
	int     ncmds;
	uint64_t started_ms;
	struct imap_reader rd;
	char    user[256];
	char    canon[256];
	char    root[PATH_MAX];
	struct mbox *mb;
	bool    readonly;
	uint32_t *vuid;
	unsigned *vflags;
	unsigned kwsent;            /* keywords announced in FLAGS (bit mask) */
	size_t  vrecent;            /* \Recent count last announced */
	size_t  vn, vcap;
	struct job *job;
	struct event *timer;        /* IDLE polls, failed-login delays */
	struct imap *next, *prev;
};

static struct imap *sessions;
static size_t nsessions;

static void imap_read(struct bufferevent *, void *);
static void imap_write(struct bufferevent *, void *);
static void imap_event(struct bufferevent *, short, void *);
static void imap_process(struct imap *);
static void imap_free(struct imap *);
static void out(struct imap *, const char *, ...) LOGFMT(2, 3);

static void
out(struct imap *s, const char *fmt, ...)
{
	va_list ap;
	struct evbuffer *o = bufferevent_get_output(s->bev);

	va_start(ap, fmt);
	evbuffer_add_vprintf(o, fmt, ap);
	va_end(ap);
	evbuffer_add(o, "\r\n", 2);
}

static void
close_after(struct imap *s)
{
	s->closing = true;
	s->state = I_LOGOUT;
	bufferevent_disable(s->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
		imap_free(s);
}

static bool
plaintext_ok(const struct imap *s)
{
	return s->tls || W->conf->auth_allow_plaintext;
}

static bool
starttls_ok(const struct imap *s)
{
	return !s->tls && W->tls != NULL && s->listen->tls != TLS_NONE;
}

static void
capability(struct imap *s, struct buf *b)
{
	buf_adds(b, "IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE SPECIAL-USE CHILDREN");
	if (s->state == I_NOAUTH) {
		if (starttls_ok(s))
			buf_adds(b, " STARTTLS");
		if (plaintext_ok(s))
			buf_adds(b, " AUTH=PLAIN");
		else
			buf_adds(b, " LOGINDISABLED");
	}
}

static void
set_timeout(struct imap *s)
{
	struct timeval tv = { s->state == I_NOAUTH ? IMAP_TIMEOUT_NOAUTH : IMAP_TIMEOUT, 0 };
	struct timeval wtv = { IMAP_TIMEOUT, 0 };
	bufferevent_set_timeouts(s->bev, &tv, &wtv);
}

/* ---- flags ---- */

static void
add_flags(struct buf *b, unsigned f, const struct mbox *mb)
{
	bool sp = false;
	static const struct { unsigned f; const char *n; } names[] = {
		{ MBOX_F_ANSWERED, "\\Answered" }, { MBOX_F_FLAGGED, "\\Flagged" }, { MBOX_F_DELETED, "\\Deleted" },
		{ MBOX_F_SEEN, "\\Seen" }, { MBOX_F_DRAFT, "\\Draft" }, { MBOX_F_RECENT, "\\Recent" },
	};
	buf_addc(b, '(');
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (f & names[i].f) {
			if (sp)
				buf_addc(b, ' ');
			buf_adds(b, names[i].n);
			sp = true;
		}
	for (int k = 0; k < MBOX_KW_MAX; k++)
		if ((f & MBOX_F_KW(k)) && mb && mb->kw[k]) {
			if (sp)
				buf_addc(b, ' ');
			buf_adds(b, mb->kw[k]);
			sp = true;
		}
	buf_addc(b, ')');
}

/* the keywords defined in a folder, as a bit mask */
static unsigned
kw_defined(const struct mbox *mb)
{
	unsigned m = 0;
	for (int k = 0; mb && k < MBOX_KW_MAX; k++)
		if (mb->kw[k])
			m |= MBOX_F_KW(k);
	return m;
}

/* "* FLAGS (...)" and PERMANENTFLAGS with the folder's keywords */
static void
flags_announce(struct buf *b, const struct mbox *mb, bool readonly)
{
	struct buf kw = BUF_INIT;
	for (int k = 0; mb && k < MBOX_KW_MAX; k++)
		if (mb->kw[k])
			buf_printf(&kw, " %s", mb->kw[k]);
	buf_printf(b, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft%s)\r\n",
	    kw.data ? kw.data : "");
	if (readonly)
		buf_adds(b, "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
	else
		buf_printf(b, "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft%s \\*)] "
		    "Flags permitted\r\n", kw.data ? kw.data : "");
	buf_free(&kw);
}

/* one flag name -> bit; 0 for a keyword; -1 bad */
static int
flag_bit(const struct imap_arg *a)
{
	static const struct { const char *n; unsigned f; } names[] = {
		{ "\\Seen", MBOX_F_SEEN }, { "\\Answered", MBOX_F_ANSWERED }, { "\\Flagged", MBOX_F_FLAGGED },
		{ "\\Deleted", MBOX_F_DELETED }, { "\\Draft", MBOX_F_DRAFT },
	};
	/* NIL is an atom too: as a flag it is the keyword "NIL" (imaptest nil) */
	if (a->type != IA_ATOM && a->type != IA_NIL)
		return -1;
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (imap_arg_is(a, names[i].n))
			return (int)names[i].f;
	if (a->len > 0 && a->s[0] == '\\')
		return imap_arg_is(a, "\\Recent") ? 0 : -1;
	/* a keyword: an atom without ] or wildcards (RFC 3501 flag-keyword) */
	if (a->len == 0 || a->len >= MBOX_KW_LEN)
		return -1;
	for (size_t i = 0; i < a->len; i++)
		if ((unsigned char)a->s[i] <= 0x20 || (unsigned char)a->s[i] >= 0x7f ||
		    strchr("(){%*\"\\]", a->s[i]))
			return -1;
	return 0;
}

#define KW_PER_COMMAND 32

static void
kw_free(char **kw, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(kw[i]);
	free(kw);
}

/* system flags into *out, keyword names into kw[] (at most KW_PER_COMMAND) */
static bool
parse_flags(const struct imap_arg *a, size_t n, unsigned *out, char ***kw, size_t *nkw)
{
	*out = 0;
	for (size_t i = 0; i < n; i++) {
		int b = flag_bit(&a[i]);
		if (b < 0)
			return false;
		*out |= (unsigned)b;
		if (b == 0 && a[i].s[0] != '\\') {
			if (*nkw >= KW_PER_COMMAND)
				return false;
			*kw = xreallocarray(*kw, *nkw + 1, sizeof(**kw));
			(*kw)[(*nkw)++] = xstrndup(a[i].s, a[i].len);
		}
	}
	return true;
}

/* keyword names -> bits of mb (creating them if create); false if a new
 * keyword does not fit (26 per folder) */
static bool
kw_bits(struct mbox *mb, char **kw, size_t nkw, bool create, unsigned *bits)
{
	bool ok = true;
	for (size_t i = 0; i < nkw; i++) {
		unsigned b = mbox_keyword_bit(mb, kw[i], create);
		if (b == 0 && create)
			ok = false;
		*bits |= b;
	}
	return ok;
}

static bool wild_match(const char *, const char *);

/* SEARCH FROM/TO/CC/BCC: the address field also matches with its
 * comments and white space left out, so <a (c)@ (c) b.org> is found as
 * a@b.org (imaptest search-addresses) */
static bool
addr_field(const char *name)
{
	return !ascii_strcasecmp(name, "From") || !ascii_strcasecmp(name, "To") ||
	    !ascii_strcasecmp(name, "Cc") || !ascii_strcasecmp(name, "Bcc");
}

static bool ci_contains(const char *, size_t, const char *);

static bool
addr_contains(const char *p, size_t len, const char *value)
{
	char *t = xmalloc(len + 1);
	size_t tl = 0;
	int depth = 0;
	bool quoted = false, r;

	for (size_t i = 0; i < len; i++) {
		char ch = p[i];
		if (quoted) {
			if (ch == '\\' && i + 1 < len)
				t[tl++] = p[++i];
			else if (ch == '"')
				quoted = false;
			else
				t[tl++] = ch;
			continue;
		}
		if (depth > 0) {
			if (ch == '\\' && i + 1 < len)
				i++;
			else if (ch == '(')
				depth++;
			else if (ch == ')')
				depth--;
			continue;
		}
		if (ch == '(')
			depth = 1;
		else if (ch == '"')
			quoted = true;
		else if (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n')
			t[tl++] = ch;
	}
	t[tl] = '\0';
	r = ci_contains(t, tl, value);
	free(t);
	return r;
}

/* LSUB with %: the parent of a subscribed mailbox further down that
 * matches the pattern comes back \Noselect unless it is subscribed itself
 * (RFC 3501 6.3.9; imaptest subscribe) */
static void
lsub_noselect_parents(struct buf *out, const char *pat, const struct mbox_folder *f, int n)
{
	char **done = NULL;
	size_t nd = 0;

	for (int i = 0; i < n; i++) {
		char par[2 * MBOX_NAME_MAX + 8], *dot;
		if (!f[i].subscribed)
			continue;
		moat_strlcpy(par, f[i].name, sizeof(par));
		while ((dot = strrchr(par, '.')) != NULL) {
			bool seen = false;
			*dot = '\0';
			if (!wild_match(pat, par))
				continue;
			for (int k = 0; k < n && !seen; k++)
				seen = f[k].subscribed && strcmp(f[k].name, par) == 0;
			for (size_t k = 0; k < nd && !seen; k++)
				seen = strcmp(done[k], par) == 0;
			if (seen)
				continue;
			done = xreallocarray(done, nd + 1, sizeof(*done));
			done[nd++] = xstrdup(par);
			buf_adds(out, "* LSUB (\\Noselect) \".\" ");
			imap_add_string(out, par, strlen(par));
			buf_adds(out, "\r\n");
		}
	}
	for (size_t k = 0; k < nd; k++)
		free(done[k]);
	free(done);
}

/* ---- message text helpers (pool threads) ---- */

/* LF -> CRLF copy */
static void
to_crlf(const char *p, size_t len, struct buf *o)
{
	buf_reserve(o, len + len / 16 + 2);
	size_t st = 0;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r')) {
			buf_add(o, p + st, i - st);
			buf_add(o, "\r\n", 2);
			st = i + 1;
		}
	}
	buf_add(o, p + st, len - st);
}

/* end of the header section (CRLF text): offset after the empty line, or len */
static size_t
hdr_end(const char *p, size_t len)
{
	if (len >= 2 && p[0] == '\r' && p[1] == '\n')
		return 2;
	for (size_t i = 0; i + 3 < len; i++)
		if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
			return i + 4;
	return len;
}

/* the first header field `name` (unfolded) into o; false if absent */
static bool
hdr_get(const char *p, size_t len, const char *name, struct buf *o)
{
	size_t nl = strlen(name), i = 0;

	while (i < len) {
		size_t e = i;
		while (e < len && p[e] != '\n')
			e++;
		if (e == i || (e == i + 1 && p[i] == '\r'))
			return false;
		if (e - i > nl && p[i + nl] == ':' && ascii_strncasecmp(p + i, name, nl) == 0) {
			size_t v = i + nl + 1;
			buf_reset(o);
			for (;;) {
				size_t end = e;
				if (end > v && p[end - 1] == '\r')
					end--;
				buf_add(o, p + v, end - v);
				if (e + 1 < len && (p[e + 1] == ' ' || p[e + 1] == '\t')) {
					v = e + 1;
					e = v;
					while (e < len && p[e] != '\n')
						e++;
					continue;
				}
				break;
			}
			/* trim */
			size_t s0 = 0;
			while (s0 < o->len && (o->data[s0] == ' ' || o->data[s0] == '\t'))
				s0++;
			buf_consume(o, s0);
			while (o->len > 0 && (o->data[o->len - 1] == ' ' || o->data[o->len - 1] == '\t'))
				o->data[--o->len] = '\0';
			return true;
		}
		i = e + 1;
	}
	return false;
}

/* HEADER.FIELDS (NOT): the matching raw fields + the empty line */
static void
hdr_fields(const char *p, size_t len, char **fields, size_t nf, bool not, struct buf *o)
{
	size_t i = 0;

	while (i < len) {
		size_t e = i;
		while (e < len && p[e] != '\n')
			e++;
		if (e == i || (e == i + 1 && p[i] == '\r'))
			break;
		/* the field with its continuation lines */
		size_t fe = e;
		while (fe + 1 < len && (p[fe + 1] == ' ' || p[fe + 1] == '\t')) {
			fe++;
			while (fe < len && p[fe] != '\n')
				fe++;
		}
		const char *colon = memchr(p + i, ':', e - i);
		bool match = false;
		if (colon) {
			size_t nlen = (size_t)(colon - (p + i));
			for (size_t k = 0; k < nf && !match; k++)
				match = strlen(fields[k]) == nlen && ascii_strncasecmp(fields[k], p + i, nlen) == 0;
		}
		if (colon && match != not)
			buf_add(o, p + i, MIN(fe + 1, len) - i);
		i = fe + 1;
	}
	buf_add(o, "\r\n", 2);
}

static bool
ci_contains(const char *h, size_t hl, const char *n)
{
	size_t nl = strlen(n);
	if (nl == 0)
		return true;
	for (size_t i = 0; i + nl <= hl; i++)
		if (ascii_strncasecmp(h + i, n, nl) == 0)
			return true;
	return false;
}

/* ---- addresses and ENVELOPE ---- */

static void
trim(const char **p, size_t *len)
{
	while (*len > 0 && isspace((unsigned char)**p)) {
		(*p)++;
		(*len)--;
	}
	while (*len > 0 && isspace((unsigned char)(*p)[*len - 1]))
		(*len)--;
}

static void
add_addr1(struct buf *b, const char *p, size_t len)
{
	const char *lt = memchr(p, '<', len), *name = NULL, *addr = p;
	size_t namel = 0, addrl = len;
	struct buf nm = BUF_INIT;

	if (lt) {
		const char *gt = memchr(lt, '>', len - (size_t)(lt - p));
		name = p;
		namel = (size_t)(lt - p);
		addr = lt + 1;
		addrl = gt ? (size_t)(gt - addr) : len - (size_t)(addr - p);
		trim(&name, &namel);
		if (namel >= 2 && name[0] == '"' && name[namel - 1] == '"') {
			for (size_t i = 1; i + 1 < namel; i++) {
				if (name[i] == '\\' && i + 2 < namel)
					i++;
				buf_addc(&nm, name[i]);
			}
		} else if (namel > 0) {
			buf_add(&nm, name, namel);
		}
	} else {
		/* "addr (comment)" */
		const char *par = memchr(p, '(', len);
		if (par) {
			const char *cp = memchr(par, ')', len - (size_t)(par - p));
			if (cp)
				buf_add(&nm, par + 1, (size_t)(cp - par - 1));
			addrl = (size_t)(par - p);
		}
	}
	trim(&addr, &addrl);
	/* an obsolete source route: <@route1,@route2:user@domain> */
	const char *route = NULL;
	size_t routel = 0;
	if (addrl > 1 && addr[0] == '@') {
		const char *colon = memchr(addr, ':', addrl);
		if (colon) {
			route = addr;
			routel = (size_t)(colon - addr);
			addrl -= routel + 1;
			addr = colon + 1;
		}
	}
	const char *at = NULL;
	for (size_t i = addrl; i-- > 0;)
		if (addr[i] == '@') {
			at = addr + i;
			break;
		}
	buf_addc(b, '(');
	if (nm.len)
		imap_add_string(b, nm.data, nm.len);
	else
		buf_adds(b, "NIL");
	buf_addc(b, ' ');
	if (route)
		imap_add_string(b, route, routel);
	else
		buf_adds(b, "NIL");
	buf_addc(b, ' ');
	/* a NIL host marks a group (RFC 3501 7.4.2): a broken address gets
	 * placeholders instead, as Dovecot and UW-IMAP write them */
	if (at && at > addr && addrl - (size_t)(at - addr) > 1) {
		imap_add_string(b, addr, (size_t)(at - addr));
		buf_addc(b, ' ');
		imap_add_string(b, at + 1, addrl - (size_t)(at - addr) - 1);
	} else if (at) {
		if (at > addr)
			imap_add_string(b, addr, (size_t)(at - addr));
		else
			buf_adds(b, "\"MISSING_MAILBOX\"");
		buf_addc(b, ' ');
		if (addrl - (size_t)(at - addr) > 1)
			imap_add_string(b, at + 1, addrl - (size_t)(at - addr) - 1);
		else
			buf_adds(b, "\"MISSING_DOMAIN\"");
	} else {
		if (addrl)
			imap_add_string(b, addr, addrl);
		else
			buf_adds(b, "\"MISSING_MAILBOX\"");
		buf_adds(b, " \"MISSING_DOMAIN\"");
	}
	buf_addc(b, ')');
	buf_free(&nm);
}

/* "(foo)" or "(a) (b)": a comment and no address */
static bool
comment_only(const char *p, size_t l)
{
	int depth = 0;
	for (size_t i = 0; i < l; i++) {
		if (p[i] == '(')
			depth++;
		else if (p[i] == ')' && depth > 0)
			depth--;
		else if (depth == 0 && p[i] != ' ' && p[i] != '\t')
			return false;
	}
	return true;
}

static void
add_addrlist(struct buf *b, const char *v, size_t len, bool present)
{
	size_t i = 0, st = 0, n = 0;
	bool q = false, ingroup = false;
	int ang = 0, par = 0;

	if (!present || len == 0) {
		buf_adds(b, "NIL");
		return;
	}
	buf_addc(b, '(');
	for (i = 0; i <= len; i++) {
		char c = i < len ? v[i] : ',';
		if (i < len && c == '\\' && q) {
			i++;
			continue;
		}
		if (c == '"')
			q = !q;
		else if (!q && c == '<')
			ang++;
		else if (!q && c == '>' && ang > 0)
			ang--;
		else if (!q && c == '(')
			par++;
		else if (!q && c == ')' && par > 0)
			par--;
		else if (!q && !ang && !par && (c == ',' || c == ';')) {
			const char *p = v + st;
			size_t l = i - st;
			/* "group: a@b, c@d;" -> (NIL NIL "group" NIL) a c (NIL NIL NIL NIL) */
			const char *colon = memchr(p, ':', l);
			if (colon && !memchr(p, '<', (size_t)(colon - p)) && !memchr(p, '"', (size_t)(colon - p))) {
				const char *g = p;
				size_t gl = (size_t)(colon - p);
				trim(&g, &gl);
				if (n < 1000) {
					buf_adds(b, "(NIL NIL ");
					imap_add_string(b, g, gl);
					buf_adds(b, " NIL)");
					n++;
					ingroup = true;
				}
				l -= (size_t)(colon + 1 - p);
				p = colon + 1;
			}
			trim(&p, &l);
			if (l > 0 && n < 1000 && !comment_only(p, l)) {
				add_addr1(b, p, l);
				n++;
			}
			if (c == ';' && ingroup && i < len && n < 1000) {
				buf_adds(b, "(NIL NIL NIL NIL)");
				n++;
				ingroup = false;
			}
			st = i + 1;
		}
	}
	if (n == 0) {
		b->len--;       /* drop '(' */
		b->data[b->len] = '\0';
		buf_adds(b, "NIL");
		return;
	}
	buf_addc(b, ')');
}

static void
add_envelope(struct buf *b, const char *h, size_t hl)
{
	struct buf v = BUF_INIT, from = BUF_INIT;
	bool hasfrom;
	static const char *const addrs[] = { "Sender", "Reply-To", "To", "Cc", "Bcc" };

	buf_adds(b, "(");
	buf_adds(b, "");
	if (hdr_get(h, hl, "Date", &v))
		imap_add_string(b, v.data, v.len);
	else
		buf_adds(b, "NIL");
	buf_addc(b, ' ');
	if (hdr_get(h, hl, "Subject", &v))
		imap_add_string(b, v.data, v.len);
	else
		buf_adds(b, "NIL");
	buf_addc(b, ' ');
	hasfrom = hdr_get(h, hl, "From", &from);
	add_addrlist(b, from.data, from.len, hasfrom);
	for (size_t i = 0; i < ARRAY_SIZE(addrs); i++) {
		bool has = hdr_get(h, hl, addrs[i], &v);
		if (has && i < 2) {
			/* an empty Sender: or Reply-To: is as good as none */
			const char *q = v.data ? v.data : "";
			size_t ql = v.len;
			trim(&q, &ql);
			has = ql > 0;
		}
		buf_addc(b, ' ');
		if (!has && i < 2)     /* Sender, Reply-To default to From */
			add_addrlist(b, from.data, from.len, hasfrom);
		else
			add_addrlist(b, v.data, v.len, has);
	}
	buf_addc(b, ' ');
	if (hdr_get(h, hl, "In-Reply-To", &v))
		imap_add_string(b, v.data, v.len);
	else
		buf_adds(b, "NIL");
	buf_addc(b, ' ');
	if (hdr_get(h, hl, "Message-ID", &v))
		imap_add_string(b, v.data, v.len);
	else
		buf_adds(b, "NIL");
	buf_addc(b, ')');
	buf_free(&v);
	buf_free(&from);
}

/* ---- MIME structure (CRLF text) ---- */

#define MIME_MAX_DEPTH 10
#define MIME_MAX_PARTS 200

struct part {
	size_t  off, len;           /* the whole part (headers + body) */
	size_t  hlen;               /* header section incl. the empty line */
	struct part *kids;
	size_t  nkids;
	bool    multipart, message;
	bool    digest_kid;         /* no Content-Type in a multipart/digest: message/rfc822 */
};

/* parameter of a Content-Type-like value */
static bool
ct_param(const char *v, size_t vl, const char *name, struct buf *o)
{
	size_t nl = strlen(name);
	for (size_t i = 0; i + nl < vl; i++) {
		if ((i == 0 || v[i - 1] == ';' || v[i - 1] == ' ' || v[i - 1] == '\t') &&
		    ascii_strncasecmp(v + i, name, nl) == 0 && v[i + nl] == '=') {
			size_t j = i + nl + 1;
			buf_reset(o);
			if (j < vl && v[j] == '"') {
				for (j++; j < vl && v[j] != '"'; j++) {
					if (v[j] == '\\' && j + 1 < vl)
						j++;
					buf_addc(o, v[j]);
				}
			} else {
				for (; j < vl && v[j] != ';' && !isspace((unsigned char)v[j]); j++)
					buf_addc(o, v[j]);
			}
			return o->len > 0;
		}
	}
	return false;
}

static void
mime_parse_in(const char *p, size_t off, size_t len, int depth, size_t *count, struct part *pt,
    bool in_digest)
{
	struct buf ct = BUF_INIT, bd = BUF_INIT;
	bool hasct;

	memset(pt, 0, sizeof(*pt));
	pt->off = off;
	pt->len = len;
	pt->hlen = hdr_end(p + off, len);
	hasct = hdr_get(p + off, pt->hlen, "Content-Type", &ct);
	if (depth >= MIME_MAX_DEPTH || (!hasct && !in_digest))
		goto done;
	/* RFC 2046 5.1.5: in a multipart/digest a part without Content-Type
	 * is message/rfc822 */
	if (!hasct || ascii_prefix_ci(ct.data, ct.len, "message/rfc822")) {
		pt->digest_kid = !hasct;
		pt->message = true;
		pt->kids = xcalloc(1, sizeof(*pt->kids));
		pt->nkids = 1;
		(*count)++;
		mime_parse_in(p, off + pt->hlen, len - pt->hlen, depth + 1, count, pt->kids, false);
		goto done;
	}
	if (!ascii_prefix_ci(ct.data, ct.len, "multipart/") || !ct_param(ct.data, ct.len, "boundary", &bd))
		goto done;
	pt->multipart = true;
	bool digest = ascii_prefix_ci(ct.data, ct.len, "multipart/digest");
	{
		const char *b = p + off + pt->hlen, *end = p + off + len;
		const char *cur = NULL;
		size_t bl = bd.len;
		const char *line = b;
		while (line < end) {
			const char *nl = memchr(line, '\n', (size_t)(end - line));
			const char *le = nl ? nl + 1 : end;
			if ((size_t)(le - line) >= bl + 2 && line[0] == '-' && line[1] == '-' &&
			    memcmp(line + 2, bd.data, bl) == 0) {
				bool last = (size_t)(le - line) >= bl + 4 && line[bl + 2] == '-' && line[bl + 3] == '-';
				if (cur != NULL && pt->nkids < MIME_MAX_PARTS && *count < MIME_MAX_PARTS) {
					/* the part ends before the CRLF that precedes the delimiter */
					const char *pe = line;
					if (pe - cur >= 2 && pe[-2] == '\r' && pe[-1] == '\n')
						pe -= 2;
					else if (pe - cur >= 1 && pe[-1] == '\n')
						pe -= 1;
					if (pe < cur)
						pe = cur;
					pt->kids = xreallocarray(pt->kids, pt->nkids + 1, sizeof(*pt->kids));
					(*count)++;
					mime_parse_in(p, (size_t)(cur - p), (size_t)(pe - cur), depth + 1, count,
					    &pt->kids[pt->nkids], digest);
					pt->nkids++;
				}
				if (last)
					break;
				cur = le;
			}
			line = le;
		}
	}
done:
	buf_free(&ct);
	buf_free(&bd);
}

static void
mime_parse(const char *p, size_t off, size_t len, int depth, size_t *count, struct part *pt)
{
	mime_parse_in(p, off, len, depth, count, pt, false);
}

static void
mime_free(struct part *pt)
{
	for (size_t i = 0; i < pt->nkids; i++)
		mime_free(&pt->kids[i]);
	free(pt->kids);
}

/*
 * Find part "1.2" (RFC 3501 6.4.5); NULL if none.  The numbers count the
 * parts of the current container: a multipart's children, or, for any
 * other body, its one part 1 (itself).  After a message/rfc822 part the
 * next number counts the parts of the message it encapsulates.  So for a
 * message that is itself message/rfc822, part 1 is the whole encapsulated
 * message and 1.1 its first part.
 */
static const struct part *
mime_find(const struct part *root, const char *path)
{
	const struct part *sel = NULL, *cont = root;
	while (*path) {
		char *end;
		unsigned long n = strtoul(path, &end, 10);
		if (end == path || n == 0)
			return NULL;
		if (sel != NULL) {
			if (sel->message && sel->nkids == 1)
				cont = &sel->kids[0];
			else if (sel->multipart)
				cont = sel;
			else
				return NULL;            /* a leaf has no parts */
		}
		if (cont->multipart) {
			if (n > cont->nkids)
				return NULL;
			sel = &cont->kids[n - 1];
		} else if (n == 1) {
			sel = cont;
		} else {
			return NULL;
		}
		path = end;
		if (*path == '.')
			path++;
	}
	return sel ? sel : root;
}

/*
 * The parameters of a Content-Type or Content-Disposition value as a
 * parenthesised list, names in lower case (as Dovecot writes them; they are
 * case-insensitive), or NIL.  With want_charset (text/ parts), a missing
 * charset is given as us-ascii, RFC 2045's default.
 */
static void
add_ct_params(struct buf *b, const char *v, size_t vl, bool want_charset)
{
	const char *semi = memchr(v, ';', vl);
	size_t n = 0;
	bool charset = false;
	size_t open = b->len;

	buf_addc(b, '(');
	const char *p = semi ? semi + 1 : v + vl, *e = v + vl;
	while (p < e && n < 50) {
		while (p < e && (*p == ' ' || *p == '\t' || *p == ';' || *p == '\r' || *p == '\n'))
			p++;
		const char *eq = memchr(p, '=', (size_t)(e - p));
		if (eq == NULL)
			break;
		const char *name = p;
		size_t nlen = (size_t)(eq - p);
		struct buf val = BUF_INIT;
		p = eq + 1;
		if (p < e && *p == '"') {
			for (p++; p < e && *p != '"'; p++) {
				if (*p == '\\' && p + 1 < e)
					p++;
				buf_addc(&val, *p);
			}
			if (p < e)
				p++;
		} else {
			while (p < e && *p != ';' && !isspace((unsigned char)*p))
				buf_addc(&val, *p++);
		}
		while (nlen > 0 && isspace((unsigned char)name[nlen - 1]))
			nlen--;
		if (n)
			buf_addc(b, ' ');
		struct buf lo = BUF_INIT;
		buf_add(&lo, name, nlen);
		for (size_t i = 0; i < lo.len; i++)
			lo.data[i] = (char)tolower((unsigned char)lo.data[i]);
		if (lo.len == 7 && !memcmp(lo.data, "charset", 7))
			charset = true;
		imap_add_string(b, lo.data ? lo.data : "", lo.len);
		buf_addc(b, ' ');
		imap_add_string(b, val.data ? val.data : "", val.len);
		buf_free(&lo);
		buf_free(&val);
		n++;
	}
	if (want_charset && !charset) {
		buf_printf(b, "%s\"charset\" \"us-ascii\"", n ? " " : "");
		n++;
	}
	if (n == 0) {
		b->len = open;
		b->data[b->len] = '\0';
		buf_adds(b, "NIL");
		return;
	}
	buf_addc(b, ')');
}

/* body-fld-dsp: ("attachment" ("filename" "x.pdf")) or NIL */
static void
add_disposition(struct buf *b, const char *h, size_t hl)
{
	struct buf v = BUF_INIT;
	if (!hdr_get(h, hl, "Content-Disposition", &v) || v.len == 0) {
		buf_adds(b, "NIL");
		buf_free(&v);
		return;
	}
	size_t e = 0;
	while (e < v.len && v.data[e] != ';' && !isspace((unsigned char)v.data[e]))
		e++;
	for (size_t i = 0; i < e; i++)
		v.data[i] = (char)tolower((unsigned char)v.data[i]);
	buf_addc(b, '(');
	imap_add_string(b, v.data, e);
	buf_addc(b, ' ');
	add_ct_params(b, v.data, v.len, false);
	buf_addc(b, ')');
	buf_free(&v);
}

/* body-fld-lang and body-fld-loc */
static void
add_lang_loc(struct buf *b, const char *h, size_t hl)
{
	struct buf v = BUF_INIT;
	if (hdr_get(h, hl, "Content-Language", &v) && v.len) {
		/* one tag as a string, several as a list */
		size_t n = 0;
		struct buf l = BUF_INIT;
		for (char *t = strtok(v.data, ", \t"); t && n < 20; t = strtok(NULL, ", \t"), n++) {
			if (n)
				buf_addc(&l, ' ');
			imap_add_string(&l, t, strlen(t));
		}
		if (n == 1)
			buf_add(b, l.data, l.len);
		else if (n > 1)
			buf_printf(b, "(%s)", l.data);
		else
			buf_adds(b, "NIL");
		buf_free(&l);
	} else
		buf_adds(b, "NIL");
	buf_addc(b, ' ');
	if (hdr_get(h, hl, "Content-Location", &v) && v.len)
		imap_add_string(b, v.data, v.len);
	else
		buf_adds(b, "NIL");
	buf_free(&v);
}

static void
add_type(struct buf *b, const char *v, size_t vl)
{
	/* "type/subtype" -> "type" "subtype" (lower case, as Dovecot) */
	size_t e = 0;
	while (e < vl && v[e] != ';' && !isspace((unsigned char)v[e]))
		e++;
	const char *slash = memchr(v, '/', e);
	struct buf t = BUF_INIT;
	if (slash == NULL || slash == v || slash + 1 == v + e) {
		buf_adds(b, "\"text\" \"plain\"");
		return;
	}
	buf_add(&t, v, (size_t)(slash - v));
	for (size_t i = 0; i < t.len; i++)
		t.data[i] = (char)tolower((unsigned char)t.data[i]);
	imap_add_string(b, t.data, t.len);
	buf_reset(&t);
	buf_add(&t, slash + 1, e - (size_t)(slash + 1 - v));
	for (size_t i = 0; i < t.len; i++)
		t.data[i] = (char)tolower((unsigned char)t.data[i]);
	buf_addc(b, ' ');
	imap_add_string(b, t.data ? t.data : "", t.len);
	buf_free(&t);
}

static void
add_bodystructure(struct buf *b, const char *p, const struct part *pt, bool ext)
{
	struct buf ct = BUF_INIT, v = BUF_INIT;
	const char *h = p + pt->off;
	bool hasct = hdr_get(h, pt->hlen, "Content-Type", &ct);

	buf_addc(b, '(');
	if (pt->multipart) {
		for (size_t i = 0; i < pt->nkids; i++)
			add_bodystructure(b, p, &pt->kids[i], ext);
		if (pt->nkids == 0)
			buf_adds(b, "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0)");
		buf_addc(b, ' ');
		const char *slash = memchr(ct.data, '/', ct.len);
		size_t e = slash ? (size_t)(slash + 1 - ct.data) : ct.len;
		struct buf sub = BUF_INIT;
		while (e < ct.len && ct.data[e] != ';' && !isspace((unsigned char)ct.data[e]))
			buf_addc(&sub, (char)tolower((unsigned char)ct.data[e++]));
		imap_add_string(b, sub.data ? sub.data : "mixed", sub.data ? sub.len : 5);
		buf_free(&sub);
		if (ext) {
			buf_addc(b, ' ');
			add_ct_params(b, ct.data, ct.len, false);
			buf_addc(b, ' ');
			add_disposition(b, h, pt->hlen);
			buf_addc(b, ' ');
			add_lang_loc(b, h, pt->hlen);
		}
	} else {
		size_t blen = pt->len - pt->hlen;
		const char *body = p + pt->off + pt->hlen;
		bool text = !hasct || ascii_prefix_ci(ct.data, ct.len, "text/");
		if (pt->digest_kid)
			text = false;
		if (hasct)
			add_type(b, ct.data, ct.len);
		else if (pt->digest_kid)
			buf_adds(b, "\"message\" \"rfc822\"");
		else
			buf_adds(b, "\"text\" \"plain\"");
		buf_addc(b, ' ');
		if (hasct)
			add_ct_params(b, ct.data, ct.len, text);
		else if (pt->digest_kid)
			buf_adds(b, "NIL");
		else
			buf_adds(b, "(\"charset\" \"us-ascii\")");
		buf_addc(b, ' ');
		if (hdr_get(h, pt->hlen, "Content-ID", &v))
			imap_add_string(b, v.data, v.len);
		else
			buf_adds(b, "NIL");
		buf_addc(b, ' ');
		if (hdr_get(h, pt->hlen, "Content-Description", &v))
			imap_add_string(b, v.data, v.len);
		else
			buf_adds(b, "NIL");
		buf_addc(b, ' ');
		if (hdr_get(h, pt->hlen, "Content-Transfer-Encoding", &v) && v.len) {
			for (size_t i = 0; i < v.len; i++)
				v.data[i] = (char)tolower((unsigned char)v.data[i]);
			imap_add_string(b, v.data, v.len);
		} else
			buf_adds(b, "\"7bit\"");
		buf_printf(b, " %zu", blen);
		if (pt->message && pt->nkids == 1) {
			const struct part *k = &pt->kids[0];
			buf_addc(b, ' ');
			add_envelope(b, p + k->off, k->hlen);
			buf_addc(b, ' ');
			add_bodystructure(b, p, k, ext);
			text = true;
		}
		if (text) {
			size_t lines = 0;
			for (size_t i = 0; i < blen; i++)
				if (body[i] == '\n')
					lines++;
			buf_printf(b, " %zu", lines);
		}
		if (ext) {
			/* body MD5 (not computed, as Dovecot), disposition, language, location */
			buf_adds(b, " NIL ");
			add_disposition(b, h, pt->hlen);
			buf_addc(b, ' ');
			add_lang_loc(b, h, pt->hlen);
		}
	}
	buf_addc(b, ')');
	buf_free(&ct);
	buf_free(&v);
}

/* ---- FETCH (pool) ---- */

static bool
needs_body(const struct fitem *it, size_t n, bool *hdronly, bool *envonly)
{
	bool any = false;
	*hdronly = true;
	*envonly = true;
	for (size_t i = 0; i < n; i++) {
		if (it[i].kind != F_ENVELOPE && it[i].kind != F_FLAGS && it[i].kind != F_UID &&
		    it[i].kind != F_INTERNALDATE && it[i].kind != F_SIZE)
			*envonly = false;
		switch (it[i].kind) {
		case F_ENVELOPE:
		case F_RFC822_HEADER:
			any = true;
			break;
		case F_SECTION:
			any = true;
			if (!((it[i].sect == S_HEADER || it[i].sect == S_FIELDS || it[i].sect == S_FIELDS_NOT) &&
			    it[i].part[0] == '\0'))
				*hdronly = false;
			break;
		case F_BODY:
		case F_BODYSTRUCTURE:
		case F_RFC822:
		case F_RFC822_TEXT:
			any = true;
			*hdronly = false;
			break;
		}
	}
	return any;
}

static void
add_section(struct buf *b, const struct fitem *it, const char *m, size_t ml, const struct part *root)
{
	const char *p = m;
	size_t len = ml, hl;
	struct buf tmp = BUF_INIT;
	const struct part *pt = root;

	if (it->part[0]) {
		pt = root ? mime_find(root, it->part) : NULL;
		if (pt == NULL) {
			buf_adds(b, "NIL");
			return;
		}
		if (it->sect == S_MIME) {
			p = m + pt->off;
			len = pt->hlen;
		} else if (it->sect == S_ALL) {
			/* BODY[1] of a part: its body (of a message/rfc822: the whole message) */
			if (pt->message || pt == root) {
				p = m + pt->off + (pt == root && !root->multipart ? pt->hlen : pt->hlen);
				len = pt->len - pt->hlen;
			} else {
				p = m + pt->off + pt->hlen;
				len = pt->len - pt->hlen;
			}
		} else {
			/* HEADER/TEXT of an embedded message */
			if (pt->message && pt->nkids == 1)
				pt = &pt->kids[0];
			p = m + pt->off;
			len = pt->len;
		}
	}
	hl = hdr_end(p, len);
	switch (it->sect) {
	case S_HEADER:
		len = hl;
		break;
	case S_TEXT:
		p += hl;
		len -= hl;
		break;
	case S_FIELDS:
	case S_FIELDS_NOT:
		hdr_fields(p, hl, it->fields, it->nfields, it->sect == S_FIELDS_NOT, &tmp);
		p = tmp.data;
		len = tmp.len;
		break;
	default:
		break;
	}
	if (it->partial) {
		size_t o = MIN((size_t)it->poff, len);
		size_t l = MIN((size_t)it->plen, len - o);
		p += o;
		len = l;
	}
	buf_printf(b, "{%zu}\r\n", len);
	buf_add(b, p ? p : "", len);
	buf_free(&tmp);
}

static void
fetch_one(struct job *j, struct mbox_msg *mm, uint32_t seq)
{
	struct buf raw = BUF_INIT, msg = BUF_INIT;
	struct buf *b = &j->out;
	bool hdronly, envonly, sp = false;
	struct part root;
	bool parsed = false;
	char date[64];

	if (needs_body(j->items, j->nitems, &hdronly, &envonly)) {
		/* ENVELOPE alone: from the field cache, not the file */
		int r = envonly ? mbox_msg_envhdr(j->mb, mm, &raw) :
		    hdronly ? mbox_msg_read_header(j->mb, mm, &raw) : mbox_msg_read(j->mb, mm, &raw);
		if (r < 0) {
			buf_free(&raw);
			return;         /* vanished: nothing to say */
		}
		to_crlf(raw.data ? raw.data : "", raw.len, &msg);
	}
	bool seen_now = false;
	if (j->setseen && !(mm->flags & MBOX_F_SEEN) && !j->mb->readonly) {
		uint32_t u = mm->uid;
		seen_now = mbox_store(j->mb, &u, 1, '+', MBOX_F_SEEN, NULL) == 0;
	}
	buf_printf(b, "* %u FETCH (", seq);
	if (j->uid) {
		buf_printf(b, "UID %u", mm->uid);
		sp = true;
	}
	for (size_t i = 0; i < j->nitems; i++) {
		const struct fitem *it = &j->items[i];
		const char *m = msg.data ? msg.data : "";
		size_t ml = msg.len;
		if (it->kind == F_UID && j->uid)
			continue;
		if (it->implicit && !seen_now)
			continue;       /* \Seen was set already: the flags did not change */
		if (sp)
			buf_addc(b, ' ');
		sp = true;
		switch (it->kind) {
		case F_FLAGS:
			buf_adds(b, "FLAGS ");
			add_flags(b, mm->flags, j->mb);
			break;
		case F_UID:
			buf_printf(b, "UID %u", mm->uid);
			break;
		case F_INTERNALDATE:
			imap_datetime_fmt(mm->idate, date, sizeof(date));
			buf_printf(b, "INTERNALDATE \"%s\"", date);
			break;
		case F_SIZE:
			buf_printf(b, "RFC822.SIZE %lld", (long long)mm->vsize);
			break;
		case F_ENVELOPE:
			buf_adds(b, "ENVELOPE ");
			add_envelope(b, m, hdr_end(m, ml));
			break;
		case F_BODY:
		case F_BODYSTRUCTURE:
			if (!parsed) {
				size_t count = 0;
				mime_parse(m, 0, ml, 0, &count, &root);
				parsed = true;
			}
			buf_adds(b, it->kind == F_BODY ? "BODY " : "BODYSTRUCTURE ");
			add_bodystructure(b, m, &root, it->kind == F_BODYSTRUCTURE);
			break;
		case F_SECTION:
			if (!parsed && it->part[0]) {
				size_t count = 0;
				mime_parse(m, 0, ml, 0, &count, &root);
				parsed = true;
			}
			buf_printf(b, "%s ", it->name);
			add_section(b, it, m, ml, parsed ? &root : NULL);
			break;
		case F_RFC822:
			buf_printf(b, "RFC822 {%zu}\r\n", ml);
			buf_add(b, m, ml);
			break;
		case F_RFC822_HEADER: {
			size_t hl = hdr_end(m, ml);
			buf_printf(b, "RFC822.HEADER {%zu}\r\n", hl);
			buf_add(b, m, hl);
			break;
		}
		case F_RFC822_TEXT: {
			size_t hl = hdr_end(m, ml);
			buf_printf(b, "RFC822.TEXT {%zu}\r\n", ml - hl);
			buf_add(b, m + hl, ml - hl);
			break;
		}
		}
	}
	buf_adds(b, ")\r\n");
	if (parsed)
		mime_free(&root);
	buf_free(&raw);
	buf_free(&msg);
}

/* ---- SEARCH (pool) ---- */

struct sctx {
	struct job *j;
	struct mbox_msg *m;
	uint32_t seq;
	struct buf hdr, full, env;
	bool hdr_ok, full_ok, env_ok;
};

/* read once with rd, converted to CRLF into *dst; its text and length */
static const char *
sctx_load(struct sctx *c, int (*rd)(struct mbox *, struct mbox_msg *, struct buf *),
    struct buf *dst, bool *ok, size_t *len)
{
	if (!*ok) {
		struct buf raw = BUF_INIT;
		(void)rd(c->j->mb, c->m, &raw);
		to_crlf(raw.data ? raw.data : "", raw.len, dst);
		buf_free(&raw);
		*ok = true;
	}
	*len = dst->len;
	return dst->data ? dst->data : "";
}

/* the envelope fields (mbox_cached_field), from the cache; the whole
 * header when that is read already */
static const char *
sctx_env(struct sctx *c, size_t *len)
{
	if (c->hdr_ok)
		return sctx_load(c, mbox_msg_read_header, &c->hdr, &c->hdr_ok, len);
	return sctx_load(c, mbox_msg_envhdr, &c->env, &c->env_ok, len);
}

static const char *
sctx_hdr(struct sctx *c, size_t *len)
{
	return sctx_load(c, mbox_msg_read_header, &c->hdr, &c->hdr_ok, len);
}

static const char *
sctx_full(struct sctx *c, size_t *len)
{
	return sctx_load(c, mbox_msg_read, &c->full, &c->full_ok, len);
}

static time_t
day_of(time_t t)
{
	return t - (t % 86400);
}

static bool
query_eval(struct query *q, struct sctx *c)
{
	const char *p;
	size_t len;
	struct buf v = BUF_INIT;
	bool r = false;

	switch (q->op) {
	case Q_ALL:
		return true;
	case Q_NONE:
		return false;
	case Q_KEYWORD:
	case Q_UNKEYWORD: {
		unsigned b = mbox_keyword_bit(c->j->mb, q->value, false);
		bool has = b != 0 && (c->m->flags & b) != 0;
		return q->op == Q_KEYWORD ? has : !has;
	}
	case Q_FLAG:
		return (c->m->flags & q->flag) != 0;
	case Q_NOFLAG:
		return (c->m->flags & q->flag) == 0;
	case Q_NEW:
		return (c->m->flags & MBOX_F_RECENT) && !(c->m->flags & MBOX_F_SEEN);
	case Q_OLD:
		return !(c->m->flags & MBOX_F_RECENT);
	case Q_LARGER:
		return c->m->vsize > q->n;
	case Q_SMALLER:
		return c->m->vsize < q->n;
	case Q_BEFORE:
		return day_of(c->m->idate) < q->t;
	case Q_ON:
		return day_of(c->m->idate) == q->t;
	case Q_SINCE:
		return day_of(c->m->idate) >= q->t;
	case Q_SENTBEFORE:
	case Q_SENTON:
	case Q_SENTSINCE: {
		/* the Date: header's day; without a usable one the message was
		 * "sent" at the epoch, as Dovecot and Cyrus treat it (SENTBEFORE
		 * matches, SENTSINCE/SENTON do not) */
		time_t t = 0;
		p = sctx_env(c, &len);
		if (hdr_get(p, len, "Date", &v)) {
			const char *d = v.data;
			const char *comma = strchr(d, ',');
			if (comma)
				d = comma + 1;
			while (*d == ' ')
				d++;
			int day, year;
			char mon[4];
			if (sscanf(d, "%d %3s %d", &day, mon, &year) == 3) {
				char tmp[32];
				time_t tt;
				snprintf(tmp, sizeof(tmp), "%d-%s-%d", day, mon, year);
				if (imap_date_parse(tmp, strlen(tmp), &tt))
					t = tt;
			}
		}
		buf_free(&v);
		t = day_of(t);
		return q->op == Q_SENTBEFORE ? t < q->t : q->op == Q_SENTON ? t == q->t : t >= q->t;
	}
	case Q_HEADER:
		p = mbox_cached_field(q->name) ? sctx_env(c, &len) : sctx_hdr(c, &len);
		/* every instance of the field */
		{
			size_t i = 0, nl = strlen(q->name);
			while (i < len && !r) {
				size_t e = i;
				while (e < len && p[e] != '\n')
					e++;
				if (e - i > nl && p[i + nl] == ':' && ascii_strncasecmp(p + i, q->name, nl) == 0) {
					size_t fe = e;
					while (fe + 1 < len && (p[fe + 1] == ' ' || p[fe + 1] == '\t')) {
						fe++;
						while (fe < len && p[fe] != '\n')
							fe++;
					}
					r = ci_contains(p + i + nl + 1, fe - i - nl - 1, q->value);
					if (!r && addr_field(q->name))
						r = addr_contains(p + i + nl + 1, fe - i - nl - 1, q->value);
					e = fe;
				}
				i = e + 1;
			}
		}
		return r;
	case Q_BODY:
		p = sctx_full(c, &len);
		{
			size_t hl = hdr_end(p, len);
			return ci_contains(p + hl, len - hl, q->value);
		}
	case Q_TEXT:
		p = sctx_full(c, &len);
		return ci_contains(p, len, q->value);
	case Q_UID:
		return imap_seqset_has(&q->set, c->m->uid, c->j->mb->nmsgs ? c->j->mb->msgs[c->j->mb->nmsgs - 1].uid : 0);
	case Q_SEQ:
		return imap_seqset_has(&q->set, c->seq, (uint32_t)c->j->n);
	case Q_NOT:
		return !query_eval(&q->kids[0], c);
	case Q_OR:
		return query_eval(&q->kids[0], c) || query_eval(&q->kids[1], c);
	case Q_AND:
		for (size_t i = 0; i < q->nkids; i++)
			if (!query_eval(&q->kids[i], c))
				return false;
		return true;
	}
	return false;
}

static void
query_free(struct query *q)
{
	free(q->name);
	free(q->value);
	imap_seqset_free(&q->set);
	for (size_t i = 0; i < q->nkids; i++)
		query_free(&q->kids[i]);
	free(q->kids);
}

/* parse one search key at a[*i]; false on error */
static bool
query_parse(const struct imap_arg *a, size_t n, size_t *i, struct query *q, int depth)
{
	static const struct { const char *k; int op; unsigned f; } simple[] = {
		{ "ALL", Q_ALL, 0 }, { "ANSWERED", Q_FLAG, MBOX_F_ANSWERED }, { "DELETED", Q_FLAG, MBOX_F_DELETED },
		{ "DRAFT", Q_FLAG, MBOX_F_DRAFT }, { "FLAGGED", Q_FLAG, MBOX_F_FLAGGED }, { "RECENT", Q_FLAG, MBOX_F_RECENT },
		{ "SEEN", Q_FLAG, MBOX_F_SEEN }, { "UNANSWERED", Q_NOFLAG, MBOX_F_ANSWERED },
		{ "UNDELETED", Q_NOFLAG, MBOX_F_DELETED }, { "UNDRAFT", Q_NOFLAG, MBOX_F_DRAFT },
		{ "UNFLAGGED", Q_NOFLAG, MBOX_F_FLAGGED }, { "UNSEEN", Q_NOFLAG, MBOX_F_SEEN },
		{ "NEW", Q_NEW, 0 }, { "OLD", Q_OLD, 0 },
	};
	static const struct { const char *k; const char *h; } hdrs[] = {
		{ "FROM", "From" }, { "TO", "To" }, { "CC", "Cc" }, { "BCC", "Bcc" }, { "SUBJECT", "Subject" },
	};
	static const struct { const char *k; int op; } dates[] = {
		{ "BEFORE", Q_BEFORE }, { "ON", Q_ON }, { "SINCE", Q_SINCE }, { "SENTBEFORE", Q_SENTBEFORE },
		{ "SENTON", Q_SENTON }, { "SENTSINCE", Q_SENTSINCE },
	};
	const struct imap_arg *k;

	memset(q, 0, sizeof(*q));
	if (*i >= n || depth > 32)
		return false;
	k = &a[(*i)++];
	if (k->type == IA_LIST) {
		q->op = Q_AND;
		size_t j = 0;
		while (j < k->nlist) {
			q->kids = xreallocarray(q->kids, q->nkids + 1, sizeof(*q->kids));
			if (!query_parse(k->list, k->nlist, &j, &q->kids[q->nkids], depth + 1))
				return false;
			q->nkids++;
		}
		return q->nkids > 0;
	}
	if (k->type != IA_ATOM)
		return false;
	for (size_t x = 0; x < ARRAY_SIZE(simple); x++)
		if (imap_arg_is(k, simple[x].k)) {
			q->op = simple[x].op;
			q->flag = simple[x].f;
			return true;
		}
	for (size_t x = 0; x < ARRAY_SIZE(hdrs); x++)
		if (imap_arg_is(k, hdrs[x].k)) {
			if (*i >= n || a[*i].type == IA_LIST)
				return false;
			q->op = Q_HEADER;
			q->name = xstrdup(hdrs[x].h);
			q->value = imap_arg_str(&a[(*i)++]);
			return true;
		}
	for (size_t x = 0; x < ARRAY_SIZE(dates); x++)
		if (imap_arg_is(k, dates[x].k)) {
			if (*i >= n || a[*i].type == IA_LIST || !imap_date_parse(a[*i].s, a[*i].len, &q->t))
				return false;
			(*i)++;
			q->op = dates[x].op;
			return true;
		}
	if (imap_arg_is(k, "HEADER")) {
		if (*i + 1 >= n || a[*i].type == IA_LIST || a[*i + 1].type == IA_LIST)
			return false;
		q->op = Q_HEADER;
		q->name = imap_arg_str(&a[(*i)++]);
		q->value = imap_arg_str(&a[(*i)++]);
		return true;
	}
	if (imap_arg_is(k, "BODY") || imap_arg_is(k, "TEXT")) {
		if (*i >= n || a[*i].type == IA_LIST)
			return false;
		q->op = imap_arg_is(k, "BODY") ? Q_BODY : Q_TEXT;
		q->value = imap_arg_str(&a[(*i)++]);
		return true;
	}
	if (imap_arg_is(k, "KEYWORD") || imap_arg_is(k, "UNKEYWORD")) {
		if (*i >= n || flag_bit(&a[*i]) != 0)
			return false;
		q->op = imap_arg_is(k, "KEYWORD") ? Q_KEYWORD : Q_UNKEYWORD;
		q->value = imap_arg_str(&a[(*i)++]);
		return true;
	}
	if (imap_arg_is(k, "LARGER") || imap_arg_is(k, "SMALLER")) {
		char *s;
		bool okn;
		if (*i >= n || a[*i].type != IA_ATOM)
			return false;
		s = imap_arg_str(&a[(*i)++]);
		okn = parse_ll(s, 0, 1LL << 40, &q->n);
		free(s);
		q->op = imap_arg_is(k, "LARGER") ? Q_LARGER : Q_SMALLER;
		return okn;
	}
	if (imap_arg_is(k, "UID")) {
		if (*i >= n || a[*i].type != IA_ATOM || !imap_seqset_parse(a[*i].s, a[*i].len, &q->set))
			return false;
		(*i)++;
		q->op = Q_UID;
		return true;
	}
	if (imap_arg_is(k, "NOT")) {
		q->op = Q_NOT;
		q->kids = xcalloc(1, sizeof(*q->kids));
		q->nkids = 1;
		return query_parse(a, n, i, &q->kids[0], depth + 1);
	}
	if (imap_arg_is(k, "OR")) {
		q->op = Q_OR;
		q->kids = xcalloc(2, sizeof(*q->kids));
		q->nkids = 2;
		return query_parse(a, n, i, &q->kids[0], depth + 1) && query_parse(a, n, i, &q->kids[1], depth + 1);
	}
	if (imap_seqset_parse(k->s, k->len, &q->set)) {
		q->op = Q_SEQ;
		return true;
	}
	return false;
}

/* ---- jobs ---- */

static void
job_free(struct job *j)
{
	if (j == NULL)
		return;
	free(j->a1);
	if (j->a2) {
		explicit_bzero(j->a2, strlen(j->a2));
		free(j->a2);
	}
	free(j->seqs);
	free(j->uids);
	for (size_t i = 0; i < j->nkw; i++)
		free(j->kw[i]);
	free(j->kw);
	for (size_t i = 0; i < j->nitems; i++) {
		for (size_t k = 0; k < j->items[i].nfields; k++)
			free(j->items[i].fields[k]);
		free(j->items[i].fields);
		free(j->items[i].name);
	}
	free(j->items);
	query_free(&j->q);
	free(j->data);
	buf_free(&j->out);
	free(j->text);
	free(j->res);
	free(j);
}

static void
jtext(struct job *j, int result, const char *t)
{
	j->result = result;
	free(j->text);
	j->text = xstrdup(t);
}

static bool
wild_match(const char *pat, const char *s)
{
	/* '*' matches anything, '%' anything but the separator */
	if (*pat == '\0')
		return *s == '\0';
	if (*pat == '*') {
		for (const char *t = s;; t++) {
			if (wild_match(pat + 1, t))
				return true;
			if (*t == '\0')
				return false;
		}
	}
	if (*pat == '%') {
		for (const char *t = s;; t++) {
			if (wild_match(pat + 1, t))
				return true;
			if (*t == '\0' || *t == '.')
				return false;
		}
	}
	return *s != '\0' && *pat == *s && wild_match(pat + 1, s + 1);
}

/*
 * BLOCKING (pool): a message moved or copied into Junk is learned as spam,
 * out of Junk (except into Trash) as ham, through the engine's Bayes
 * (Dovecot's antispam plugin semantics).  The copies in dst are read: they
 * are the same bytes.  Learning the same message twice is refused by the
 * digest (BAYES_ALREADY); a relearn as the other class undoes the first.
 */
static void
junk_train(struct imap *s, struct mbox *src, struct mbox *dst, const uint32_t *newuids, size_t n)
{
	const char *su = mbox_special_use(src->name), *du = mbox_special_use(dst->name);
	bool sj = su && !strcmp(su, "\\Junk"), dj = du && !strcmp(du, "\\Junk");
	bool dt = du && !strcmp(du, "\\Trash");
	bool spam;
	size_t learned = 0, already = 0, failed = 0;

	if (W->engine == NULL || !W->conf->bayes || sj == dj || (sj && dt))
		return;
	spam = dj;
	for (size_t i = 0; i < n; i++) {
		struct mbox_msg *m;
		struct buf raw = BUF_INIT;
		if (newuids[i] == 0 || (m = mbox_find(dst, newuids[i])) == NULL)
			continue;
		if (mbox_msg_read(dst, m, &raw) < 0) {
			failed++;
			buf_free(&raw);
			continue;
		}
		switch (engine_learn(W->engine, raw.data ? raw.data : "", raw.len, spam)) {
		case BAYES_OK: learned++; break;
		case BAYES_ALREADY: already++; break;
		default: failed++; break;
		}
		buf_free(&raw);
	}
	log_info("imap event=junk-learn user=%s class=%s from=%s to=%s learned=%zu already=%zu failed=%zu",
	    esc(s->user), spam ? "spam" : "ham", esc(src->name), esc(dst->name), learned, already, failed);
}

static void
job_work(void *arg)
{
	struct imap *s = arg;
	struct job *j = s->job;
	char *err = NULL;
	const struct moat_conf *c = W->conf;

	switch (j->op) {
	case J_LOGIN:
		j->result = mbox_login(c, j->a1, j->a2, s->canon, sizeof(s->canon), s->root, sizeof(s->root));
		break;
	case J_SELECT:
		if ((j->mb = mbox_open(s->root, j->a1, &err)) == NULL) {
			jtext(j, 1, "[NONEXISTENT] No such mailbox");
			break;
		}
		j->mb->readonly = j->flags != 0;
		if (mbox_sync(j->mb, !j->mb->readonly, &err) < 0) {
			jtext(j, 1, "[SERVERBUG] Cannot open the mailbox");
			mbox_close(j->mb);
			j->mb = NULL;
		}
		break;
	case J_POLL:
		if (mbox_sync(j->mb, !j->mb->readonly, &err) < 0)
			jtext(j, 1, "[SERVERBUG] Cannot sync the mailbox");
		break;
	case J_FETCH: {
		size_t start = j->next;
		if (start == 0 && mbox_sync(j->mb, !j->mb->readonly, &err) < 0) {
			jtext(j, 1, "[SERVERBUG] Cannot sync the mailbox");
			break;
		}
		for (; j->next < j->n && j->out.len < IMAP_FETCH_CHUNK; j->next++) {
			struct mbox_msg *m = mbox_find(j->mb, j->uids[j->next]);
			if (m != NULL)
				fetch_one(j, m, j->seqs[j->next]);
		}
		mbox_cache_flush(j->mb);
		break;
	}
	case J_STORE: {
		unsigned bits = j->flags;
		if (mbox_sync(j->mb, false, &err) < 0) {
			jtext(j, 1, "[SERVERBUG] Cannot sync");
			break;
		}
		if (!kw_bits(j->mb, j->kw, j->nkw, j->mode != '-', &bits)) {
			jtext(j, 1, "[LIMIT] Too many keywords in this mailbox (26)");
			break;
		}
		if (mbox_store(j->mb, j->uids, j->n, j->mode, bits, &err) < 0)
			jtext(j, 1, "[SERVERBUG] Cannot store flags");
		break;
	}
	case J_SEARCH: {
		if (mbox_sync(j->mb, !j->mb->readonly, &err) < 0) {
			jtext(j, 1, "[SERVERBUG] Cannot sync the mailbox");
			break;
		}
		j->res = xcalloc(j->n + 1, sizeof(*j->res));
		for (size_t i = 0; i < j->n; i++) {
			struct sctx sc;
			memset(&sc, 0, sizeof(sc));
			sc.j = j;
			sc.seq = j->seqs[i];
			if ((sc.m = mbox_find(j->mb, j->uids[i])) == NULL)
				continue;
			if (query_eval(&j->q, &sc))
				j->res[j->nres++] = j->uid ? j->uids[i] : j->seqs[i];
			buf_free(&sc.hdr);
			buf_free(&sc.full);
			buf_free(&sc.env);
		}
		mbox_cache_flush(j->mb);
		break;
	}
	case J_COPY:
	case J_MOVE: {
		struct mbox *dst = mbox_open(s->root, j->a1, &err);
		if (dst == NULL) {
			jtext(j, 1, "[TRYCREATE] No such mailbox");
			break;
		}
		if (mbox_sync(j->mb, false, &err) < 0 || mbox_sync(dst, false, &err) < 0) {
			jtext(j, 1, "[SERVERBUG] Cannot sync");
			mbox_close(dst);
			break;
		}
		j->res = xcalloc(j->n + 1, sizeof(*j->res));
		if (mbox_copy(j->mb, j->uids, j->n, dst, j->res, &err) < 0) {
			jtext(j, 1, "[SERVERBUG] Copy failed");
			mbox_close(dst);
			break;
		}
		/* COPYUID: source uids that were copied and their new uids */
		{
			struct buf src = BUF_INIT, dstb = BUF_INIT;
			uint32_t *sv = xcalloc(j->n + 1, sizeof(*sv)), *dv = xcalloc(j->n + 1, sizeof(*dv));
			size_t k = 0;
			for (size_t i = 0; i < j->n; i++)
				if (j->res[i]) {
					sv[k] = j->uids[i];
					dv[k++] = j->res[i];
				}
			/* uid lists are sent as sets; keep pairs in order */
			for (size_t i = 0; i < k; i++) {
				buf_printf(&src, "%s%u", i ? "," : "", sv[i]);
				buf_printf(&dstb, "%s%u", i ? "," : "", dv[i]);
			}
			if (k > 0) {
				struct buf t = BUF_INIT;
				buf_printf(&t, "[COPYUID %u %s %s]", dst->uidvalidity, src.data, dstb.data);
				free(j->text);
				j->text = buf_steal(&t);
			}
			buf_free(&src);
			buf_free(&dstb);
			free(dv);
			if (j->op == J_MOVE && k > 0 && mbox_expunge(j->mb, sv, k, &err) < 0)
				jtext(j, 1, "[SERVERBUG] Copied but not removed");
			free(sv);
		}
		junk_train(s, j->mb, dst, j->res, j->n);
		mbox_close(dst);
		break;
	}
	case J_EXPUNGE:
	case J_CLOSE: {
		uint32_t *v;
		size_t k = 0;
		if (mbox_sync(j->mb, false, &err) < 0) {
			jtext(j, 1, "[SERVERBUG] Cannot sync");
			break;
		}
		v = xcalloc(j->mb->nmsgs + 1, sizeof(*v));
		for (size_t i = 0; i < j->mb->nmsgs; i++) {
			struct mbox_msg *m = &j->mb->msgs[i];
			if (!(m->flags & MBOX_F_DELETED))
				continue;
			if (j->n > 0 || j->uid) {
				/* UID EXPUNGE: only those in the set */
				bool in = false;
				for (size_t x = 0; x < j->n && !in; x++)
					in = j->uids[x] == m->uid;
				if (!in)
					continue;
			}
			v[k++] = m->uid;
		}
		if (k > 0 && mbox_expunge(j->mb, v, k, &err) < 0)
			jtext(j, 1, "[SERVERBUG] Expunge failed");
		free(v);
		break;
	}
	case J_LIST:
	case J_LSUB: {
		struct mbox_folder *f = NULL;
		int n = mbox_folders(s->root, &f, &err);
		char pat[2 * MBOX_NAME_MAX + 8];
		snprintf(pat, sizeof(pat), "%s%s", j->a1, j->a2);
		if (j->a2[0] == '\0') {
			buf_adds(&j->out, "* LIST (\\Noselect) \".\" \"\"\r\n");
			free(f);
			break;
		}
		for (int i = 0; i < n; i++) {
			bool match = wild_match(pat, f[i].name) ||
			    (i == 0 && ascii_strcasecmp(pat, "INBOX") == 0);
			if (!match && i == 0) {
				/* INBOX matches case-insensitively */
				char up[sizeof(pat)];
				moat_strlcpy(up, pat, sizeof(up));
				if (ascii_strncasecmp(up, "INBOX", 5) == 0)
					memcpy(up, "INBOX", 5);
				match = wild_match(up, "INBOX");
			}
			if (!match || (j->op == J_LSUB && !f[i].subscribed))
				continue;
			/* LSUB: the RFC 3348 child attributes belong to LIST
			 * (Dovecot leaves them out of LSUB too) */
			bool sp = false;
			buf_printf(&j->out, "* %s (", j->op == J_LSUB ? "LSUB" : "LIST");
			if (j->op == J_LIST) {
				buf_adds(&j->out, f[i].children ? "\\HasChildren" : "\\HasNoChildren");
				sp = true;
			}
			if (f[i].special) {
				buf_printf(&j->out, "%s%s", sp ? " " : "", f[i].special);
				sp = true;
			}
			if (j->flags && f[i].subscribed)
				buf_printf(&j->out, "%s\\Subscribed", sp ? " " : "");
			buf_adds(&j->out, ") \".\" ");
			imap_add_string(&j->out, f[i].name, strlen(f[i].name));
			buf_adds(&j->out, "\r\n");
		}
		if (j->op == J_LSUB && strchr(pat, '%') != NULL)
			lsub_noselect_parents(&j->out, pat, f, n);
		free(f);
		if (n < 0)
			jtext(j, 1, "[SERVERBUG] Cannot list");
		break;
	}
	case J_STATUS: {
		struct mbox_status st;
		static const char *const names[] = { "MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE" };
		if (mbox_get_status(s->root, j->a1, &st, &err) < 0) {
			jtext(j, 1, "[NONEXISTENT] No such mailbox");
			break;
		}
		if (s->mb && !strcmp(s->mb->name, mbox_is_inbox(j->a1) ? "INBOX" : j->a1)) {
			/* the selected mailbox: its \Recent messages are this session's */
			st.recent = 0;
			for (size_t i = 0; i < s->vn; i++)
				if (s->vflags[i] & MBOX_F_RECENT)
					st.recent++;
		}
		unsigned long long vals[6] = { st.messages, st.recent, st.uidnext, st.uidvalidity, st.unseen, st.size };
		bool sp = false;
		buf_adds(&j->out, "* STATUS ");
		imap_add_string(&j->out, j->a1, strlen(j->a1));
		buf_adds(&j->out, " (");
		for (size_t i = 0; i < 6; i++)
			if (j->statusitems[i]) {
				buf_printf(&j->out, "%s%s %llu", sp ? " " : "", names[i], vals[i]);
				sp = true;
			}
		buf_adds(&j->out, ")\r\n");
		break;
	}
	case J_CREATE:
		if (mbox_create(s->root, j->a1, &err) < 0)
			jtext(j, 1, err ? err : "Cannot create");
		break;
	case J_DELETE:
		if (mbox_delete(s->root, j->a1, &err) < 0)
			jtext(j, 1, err ? err : "Cannot delete");
		break;
	case J_RENAME:
		if (mbox_rename(s->root, j->a1, j->a2, &err) < 0)
			jtext(j, 1, err ? err : "Cannot rename");
		break;
	case J_SUB:
	case J_UNSUB:
		if (mbox_subscribe(s->root, j->a1, j->op == J_SUB, &err) < 0)
			jtext(j, 1, "[SERVERBUG] Cannot change subscriptions");
		break;
	case J_APPEND: {
		struct mbox *dst = j->mb;
		uint32_t uid = 0;
		bool own = false;
		if (dst == NULL || strcmp(dst->name, mbox_is_inbox(j->a1) ? "INBOX" : j->a1) != 0) {
			dst = mbox_open(s->root, j->a1, &err);
			own = true;
		}
		if (dst == NULL) {
			jtext(j, 1, "[TRYCREATE] No such mailbox");
			break;
		}
		unsigned bits = j->flags;
		if (!kw_bits(dst, j->kw, j->nkw, true, &bits)) {
			jtext(j, 1, "[LIMIT] Too many keywords in this mailbox (26)");
			if (own)
				mbox_close(dst);
			break;
		}
		if (mbox_append(dst, j->data, j->datalen, bits, j->date, &uid, &err) < 0) {
			jtext(j, 1, "[SERVERBUG] Cannot append");
		} else {
			struct buf t = BUF_INIT;
			buf_printf(&t, "[APPENDUID %u %u]", dst->uidvalidity, uid);
			free(j->text);
			j->text = buf_steal(&t);
		}
		if (own)
			mbox_close(dst);
		break;
	}
	}
	free(err);
}

/* ---- the view ---- */

static void
view_push(struct imap *s, uint32_t uid, unsigned flags)
{
	if (s->vn == s->vcap) {
		s->vcap = s->vcap ? s->vcap * 2 : 64;
		s->vuid = xreallocarray(s->vuid, s->vcap, sizeof(*s->vuid));
		s->vflags = xreallocarray(s->vflags, s->vcap, sizeof(*s->vflags));
	}
	s->vuid[s->vn] = uid;
	s->vflags[s->vn] = flags;
	s->vn++;
}

static void
view_reset(struct imap *s)
{
	xfree(s->vuid);
	xfree(s->vflags);
	s->vn = s->vcap = 0;
}

/* tell the client what changed on disk; expunges only when allowed */
static void
reconcile(struct imap *s, bool expunge_ok)
{
	struct mbox *mb = s->mb;
	struct buf b = BUF_INIT;
	size_t added = 0;

	if (mb == NULL)
		return;
	if (kw_defined(mb) != s->kwsent) {
		/* keywords created (here or by another session): RFC 3501 7.2.6 */
		flags_announce(&b, mb, s->readonly);
		s->kwsent = kw_defined(mb);
	}
	if (expunge_ok) {
		for (size_t i = s->vn; i-- > 0;) {
			if (mbox_find(mb, s->vuid[i]) != NULL)
				continue;
			buf_printf(&b, "* %zu EXPUNGE\r\n", i + 1);
			memmove(s->vuid + i, s->vuid + i + 1, (s->vn - i - 1) * sizeof(*s->vuid));
			memmove(s->vflags + i, s->vflags + i + 1, (s->vn - i - 1) * sizeof(*s->vflags));
			s->vn--;
		}
	}
	for (size_t i = 0; i < s->vn; i++) {
		struct mbox_msg *m = mbox_find(mb, s->vuid[i]);
		if (m == NULL || m->flags == s->vflags[i])
			continue;
		s->vflags[i] = m->flags;
		buf_printf(&b, "* %zu FETCH (UID %u FLAGS ", i + 1, m->uid);
		add_flags(&b, m->flags, mb);
		buf_adds(&b, ")\r\n");
	}
	{
		uint32_t last = s->vn ? s->vuid[s->vn - 1] : 0;
		for (size_t k = mbox_lower(mb, last + 1); k < mb->nmsgs; k++) {
			view_push(s, mb->msgs[k].uid, mb->msgs[k].flags);
			added++;
		}
	}
	{
		size_t recent = 0;
		for (size_t i = 0; i < s->vn; i++)
			if (s->vflags[i] & MBOX_F_RECENT)
				recent++;
		if (added)
			buf_printf(&b, "* %zu EXISTS\r\n* %zu RECENT\r\n", s->vn, recent);
		else if (recent != s->vrecent)
			buf_printf(&b, "* %zu RECENT\r\n", recent);
		s->vrecent = recent;
	}
	if (b.len)
		evbuffer_add(bufferevent_get_output(s->bev), b.data, b.len);
	buf_free(&b);
}

static void submit(struct imap *s, struct job *j);

static void
tagged(struct imap *s, struct job *j, const char *okname)
{
	static const char *const res[] = { "OK", "NO", "BAD" };
	if (j->result == 0 && j->text && j->text[0])
		out(s, "%s OK %s %s completed", j->tag, j->text, okname);
	else if (j->result == 0)
		out(s, "%s OK %s completed", j->tag, okname);
	else
		out(s, "%s %s %s", j->tag, res[j->result], j->text ? j->text : "failed");
}

static void
login_delayed(evutil_socket_t fd, short ev, void *arg)
{
	struct imap *s = arg;
	event_free(s->timer);
	s->timer = NULL;
	s->delaying = false;
	out(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed", s->authtag);
	bufferevent_enable(s->bev, EV_READ);
	imap_process(s);
}

static void idle_tick(evutil_socket_t, short, void *);

static void
job_done(void *arg)
{
	struct imap *s = arg;
	struct job *j = s->job;
	struct evbuffer *o;

	s->busy = false;
	if (s->dead) {
		s->job = NULL;
		if (j->op == J_SELECT && j->mb)
			mbox_close(j->mb);
		job_free(j);
		imap_free(s);
		return;
	}
	o = bufferevent_get_output(s->bev);
	switch (j->op) {
	case J_LOGIN:
		if (j->result == 1) {
			mbox_throttle_ok(s->ip);
			s->state = I_AUTH;
			log_info("sid=%s event=login proto=imap ip=%s user=%s tls=%s", s->sid, s->ip, s->canon,
			    s->tls ? "yes" : "no");
			struct buf cap = BUF_INIT;
			capability(s, &cap);
			out(s, "%s OK [CAPABILITY %s] Logged in", j->tag, cap.data);
			buf_free(&cap);
			set_timeout(s);
		} else if (j->result == 0) {
			unsigned d;
			mbox_throttle_fail(s->ip);
			d = mbox_throttle_delay(s->ip);
			log_notice("sid=%s event=login-failed proto=imap ip=%s user=\"%s\" delay=%u",
			    s->sid, s->ip, esc(s->user), d);
			moat_strlcpy(s->authtag, j->tag, sizeof(s->authtag));
			struct timeval tv = { d / 1000, (d % 1000) * 1000 };
			if (s->timer)
				event_free(s->timer);
			s->timer = evtimer_new(W->base, login_delayed, s);
			s->delaying = true;
			evtimer_add(s->timer, &tv);
			s->job = NULL;
			job_free(j);
			return;
		} else {
			log_warnx("sid=%s event=login-error proto=imap ip=%s user=\"%s\"", s->sid, s->ip, esc(s->user));
			out(s, "%s NO [UNAVAILABLE] Temporary server failure", j->tag);
		}
		break;
	case J_SELECT:
		if (j->mb == NULL) {
			tagged(s, j, "SELECT");
			break;
		}
		{
			size_t recent = 0, unseen = 0;
			mbox_close(s->mb);
			view_reset(s);
			s->mb = j->mb;
			j->mb = NULL;
			s->readonly = s->mb->readonly;
			s->state = I_SELECTED;
			for (size_t i = 0; i < s->mb->nmsgs; i++) {
				view_push(s, s->mb->msgs[i].uid, s->mb->msgs[i].flags);
				if (s->mb->msgs[i].flags & MBOX_F_RECENT)
					recent++;
				if (!unseen && !(s->mb->msgs[i].flags & MBOX_F_SEEN))
					unseen = i + 1;
			}
			{
				struct buf fb = BUF_INIT;
				flags_announce(&fb, s->mb, s->readonly);
				evbuffer_add(bufferevent_get_output(s->bev), fb.data, fb.len);
				buf_free(&fb);
				s->kwsent = kw_defined(s->mb);
			}
			out(s, "* %zu EXISTS", s->vn);
			out(s, "* %zu RECENT", recent);
			s->vrecent = recent;
			if (unseen)
				out(s, "* OK [UNSEEN %zu] First unseen", unseen);
			out(s, "* OK [UIDVALIDITY %u] UIDs valid", s->mb->uidvalidity);
			out(s, "* OK [UIDNEXT %u] Predicted next UID", s->mb->uidnext);
			out(s, "%s OK [%s] %s completed", j->tag, s->readonly ? "READ-ONLY" : "READ-WRITE",
			    s->readonly ? "EXAMINE" : "SELECT");
		}
		break;
	case J_POLL:
		reconcile(s, true);
		if (s->idling) {
			s->job = NULL;
			job_free(j);
			if (s->timer == NULL)
				s->timer = evtimer_new(W->base, idle_tick, s);
			struct timeval tv = { IMAP_IDLE_POLL, 0 };
			evtimer_add(s->timer, &tv);
			bufferevent_enable(s->bev, EV_READ);
			imap_process(s);
			return;
		}
		tagged(s, j, j->a1 ? j->a1 : "NOOP");
		break;
	case J_FETCH:
		if (j->out.len)
			evbuffer_add(o, j->out.data, j->out.len);
		buf_reset(&j->out);
		if (j->result == 0 && j->next < j->n) {
			/* more to come: made while this chunk is written, or
			 * once the output drained if the client lags */
			if (evbuffer_get_length(o) <= 2 * IMAP_FETCH_CHUNK) {
				s->busy = true;
				pool_submit(W->pool, job_work, job_done, s);
			} else {
				s->fetchmore = true;
			}
			return;
		}
		/* FETCH answers carried the flags already (\Seen set by BODY[]) */
		for (size_t i = 0; i < j->n; i++) {
			struct mbox_msg *m = mbox_find(s->mb, j->uids[i]);
			if (m && j->seqs[i] >= 1 && j->seqs[i] <= s->vn && s->vuid[j->seqs[i] - 1] == m->uid)
				s->vflags[j->seqs[i] - 1] = m->flags;
		}
		reconcile(s, j->uid);
		tagged(s, j, j->uid ? "UID FETCH" : "FETCH");
		break;
	case J_STORE:
		if (kw_defined(s->mb) != s->kwsent) {
			struct buf fb = BUF_INIT;
			flags_announce(&fb, s->mb, s->readonly);
			evbuffer_add(o, fb.data, fb.len);
			buf_free(&fb);
			s->kwsent = kw_defined(s->mb);
		}
		for (size_t i = 0; i < j->n && j->result == 0; i++) {
			struct mbox_msg *m = mbox_find(s->mb, j->uids[i]);
			if (m == NULL)
				continue;
			/* the view takes the new flags: no duplicate FETCH from reconcile */
			if (j->seqs[i] >= 1 && j->seqs[i] <= s->vn && s->vuid[j->seqs[i] - 1] == m->uid)
				s->vflags[j->seqs[i] - 1] = m->flags;
			if (!j->silent) {
				struct buf b = BUF_INIT;
				buf_printf(&b, "* %u FETCH (", j->seqs[i]);
				if (j->uid)
					buf_printf(&b, "UID %u ", m->uid);
				buf_adds(&b, "FLAGS ");
				add_flags(&b, m->flags, s->mb);
				buf_adds(&b, ")\r\n");
				evbuffer_add(o, b.data, b.len);
				buf_free(&b);
			}
		}
		reconcile(s, j->uid);
		tagged(s, j, j->uid ? "UID STORE" : "STORE");
		break;
	case J_SEARCH: {
		struct buf b = BUF_INIT;
		buf_adds(&b, "* SEARCH");
		for (size_t i = 0; i < j->nres; i++)
			buf_printf(&b, " %u", j->res[i]);
		buf_adds(&b, "\r\n");
		evbuffer_add(o, b.data, b.len);
		buf_free(&b);
		reconcile(s, j->uid);
		tagged(s, j, j->uid ? "UID SEARCH" : "SEARCH");
		break;
	}
	case J_COPY:
		reconcile(s, true);
		tagged(s, j, j->uid ? "UID COPY" : "COPY");
		break;
	case J_MOVE:
		if (j->result == 0 && j->text) {
			out(s, "* OK %s Moved", j->text);
			xfree(j->text);
		}
		reconcile(s, true);
		tagged(s, j, j->uid ? "UID MOVE" : "MOVE");
		break;
	case J_EXPUNGE:
		reconcile(s, true);
		tagged(s, j, j->uid ? "UID EXPUNGE" : "EXPUNGE");
		break;
	case J_CLOSE:
		mbox_close(s->mb);
		s->mb = NULL;
		view_reset(s);
		s->state = I_AUTH;
		out(s, "%s OK CLOSE completed", j->tag);
		break;
	case J_APPEND:
		if (s->mb)
			reconcile(s, true);
		tagged(s, j, "APPEND");
		break;
	default:
		if (j->out.len)
			evbuffer_add(o, j->out.data, j->out.len);
		if (s->mb && j->op == J_STATUS)
			reconcile(s, true);
		{
			static const char *const names[] = { [J_LIST] = "LIST", [J_LSUB] = "LSUB",
				[J_STATUS] = "STATUS", [J_CREATE] = "CREATE", [J_DELETE] = "DELETE",
				[J_RENAME] = "RENAME", [J_SUB] = "SUBSCRIBE", [J_UNSUB] = "UNSUBSCRIBE" };
			const char *nm = j->op >= 0 && (size_t)j->op < ARRAY_SIZE(names) && names[j->op] ? names[j->op] : "Command";
			tagged(s, j, nm);
		}
		break;
	}
	s->job = NULL;
	job_free(j);
	bufferevent_enable(s->bev, EV_READ);
	imap_process(s);
}

static void
submit(struct imap *s, struct job *j)
{
	s->job = j;
	s->busy = true;
	if (j->mb == NULL && j->op != J_SELECT && j->op != J_LOGIN)
		j->mb = s->mb;
	bufferevent_disable(s->bev, EV_READ);
	pool_submit(W->pool, job_work, job_done, s);
}

static struct job *
newjob(int op, const char *tag)
{
	struct job *j = xcalloc(1, sizeof(*j));
	j->op = op;
	moat_strlcpy(j->tag, tag, sizeof(j->tag));
	return j;
}

static void
idle_tick(evutil_socket_t fd, short ev, void *arg)
{
	struct imap *s = arg;
	struct job *j;

	if (!s->idling || s->busy || s->mb == NULL)
		return;
	j = newjob(J_POLL, s->idletag);
	submit(s, j);
}

/* ---- commands ---- */

#define ST_N (1u << I_NOAUTH)
#define ST_A (1u << I_AUTH)
#define ST_S (1u << I_SELECTED)

struct cmd {
	const char *tag;
	const struct imap_arg *a;
	size_t n;
	bool uid;
};

static void
bad(struct imap *s, const char *tag, const char *msg)
{
	out(s, "%s BAD %s", tag, msg);
	if (++s->nbad >= IMAP_MAX_BAD) {
		out(s, "* BYE Too many invalid commands");
		log_info("sid=%s event=too-many-errors proto=imap ip=%s", s->sid, s->ip);
		close_after(s);
	}
}

/* mailbox name argument (astring) -> NUL-terminated copy; NULL if bad */
static char *
mbox_arg(const struct imap_arg *a)
{
	char *n;
	if (a->type == IA_LIST)
		return NULL;
	n = imap_arg_str(a);
	if (mbox_is_inbox(n)) {
		free(n);
		return xstrdup("INBOX");
	}
	return n;
}

/* seq/uid set -> the view's (seq, uid) pairs */
static bool
targets(struct imap *s, const struct imap_arg *a, bool uid, struct job *j)
{
	struct imap_seqset set;
	size_t cap = 0;

	if (a->type != IA_ATOM || !imap_seqset_parse(a->s, a->len, &set))
		return false;
	uint32_t star = uid ? (s->vn ? s->vuid[s->vn - 1] : 0) : (uint32_t)s->vn;
	for (size_t i = 0; i < s->vn; i++) {
		uint32_t key = uid ? s->vuid[i] : (uint32_t)(i + 1);
		if (!imap_seqset_has(&set, key, star))
			continue;
		if (j->n == cap) {
			cap = cap ? cap * 2 : 64;
			j->seqs = xreallocarray(j->seqs, cap, sizeof(*j->seqs));
			j->uids = xreallocarray(j->uids, cap, sizeof(*j->uids));
		}
		j->seqs[j->n] = (uint32_t)(i + 1);
		j->uids[j->n] = s->vuid[i];
		j->n++;
	}
	imap_seqset_free(&set);
	return true;
}

static void
cmd_capability(struct imap *s, struct cmd *c)
{
	struct buf b = BUF_INIT;
	capability(s, &b);
	out(s, "* CAPABILITY %s", b.data);
	out(s, "%s OK CAPABILITY completed", c->tag);
	buf_free(&b);
}

static void
cmd_noop(struct imap *s, struct cmd *c)
{
	if (s->state == I_SELECTED) {
		struct job *j = newjob(J_POLL, c->tag);
		j->a1 = xstrdup(c->a == NULL ? "NOOP" : "NOOP");
		submit(s, j);
		return;
	}
	out(s, "%s OK NOOP completed", c->tag);
}

static void
cmd_logout(struct imap *s, struct cmd *c)
{
	out(s, "* BYE Logging out");
	out(s, "%s OK LOGOUT completed", c->tag);
	log_info("sid=%s event=logout proto=imap ip=%s user=%s", s->sid, s->ip, s->canon[0] ? s->canon : "-");
	close_after(s);
}

static void
cmd_starttls(struct imap *s, struct cmd *c)
{
	if (!starttls_ok(s)) {
		out(s, "%s NO STARTTLS not available", c->tag);
		return;
	}
	out(s, "%s OK Begin TLS negotiation now", c->tag);
	s->starttls = true;
	bufferevent_disable(s->bev, EV_READ);
}

static void
do_login(struct imap *s, const char *tag, const char *user, const char *pass)
{
	if (mbox_throttle_refused(s->ip)) {
		log_notice("sid=%s event=login-refused proto=imap ip=%s user=\"%s\"", s->sid, s->ip,
		    esc(user));
		out(s, "%s NO [UNAVAILABLE] Too many failed logins from your address; try again later", tag);
		return;
	}
	struct job *j = newjob(J_LOGIN, tag);
	moat_strlcpy(s->user, user, sizeof(s->user));
	j->a1 = xstrdup(user);
	j->a2 = xstrdup(pass);
	submit(s, j);
}

static void
cmd_login(struct imap *s, struct cmd *c)
{
	char *u, *p;

	if (!plaintext_ok(s)) {
		out(s, "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections", c->tag);
		return;
	}
	if (c->n != 2 || c->a[0].type == IA_LIST || c->a[1].type == IA_LIST) {
		bad(s, c->tag, "Usage: LOGIN user password");
		return;
	}
	u = imap_arg_str(&c->a[0]);
	p = imap_arg_str(&c->a[1]);
	if (strlen(u) >= 256 || strlen(p) >= 512 || memchr(c->a[0].s, '\0', c->a[0].len))
		out(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed", c->tag);
	else
		do_login(s, c->tag, u, p);
	explicit_bzero(p, strlen(p));
	free(u);
	free(p);
}

static void
auth_plain(struct imap *s, const char *tag, const char *b64, size_t len)
{
	char user[256], pass[512];

	if (len == 1 && b64[0] == '*') {
		out(s, "%s BAD Authentication cancelled", tag);
		return;
	}
	if (!mbox_sasl_plain(b64, len, user, sizeof(user), pass, sizeof(pass))) {
		bad(s, tag, "Invalid PLAIN response");
		return;
	}
	do_login(s, tag, user, pass);
	explicit_bzero(pass, sizeof(pass));
}

static void
cmd_authenticate(struct imap *s, struct cmd *c)
{
	if (c->n < 1 || c->a[0].type != IA_ATOM) {
		bad(s, c->tag, "Usage: AUTHENTICATE mechanism");
		return;
	}
	if (!imap_arg_is(&c->a[0], "PLAIN")) {
		out(s, "%s NO Unsupported authentication mechanism", c->tag);
		return;
	}
	if (!plaintext_ok(s)) {
		out(s, "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections", c->tag);
		return;
	}
	if (c->n >= 2 && c->a[1].type != IA_LIST) {
		if (c->a[1].len == 1 && c->a[1].s[0] == '=')
			auth_plain(s, c->tag, "", 0);
		else
			auth_plain(s, c->tag, c->a[1].s, c->a[1].len);
		return;
	}
	moat_strlcpy(s->authtag, c->tag, sizeof(s->authtag));
	s->authcont = true;
	out(s, "+ ");
}

static void
cmd_select(struct imap *s, struct cmd *c, bool examine)
{
	struct job *j;
	char *name;

	if (c->n < 1 || (name = mbox_arg(&c->a[0])) == NULL) {
		bad(s, c->tag, "Usage: SELECT mailbox");
		return;
	}
	/* a failed SELECT leaves no mailbox selected (RFC 3501 6.3.1) */
	if (s->mb) {
		mbox_close(s->mb);
		s->mb = NULL;
		view_reset(s);
		s->state = I_AUTH;
	}
	j = newjob(J_SELECT, c->tag);
	j->a1 = name;
	j->flags = examine;
	submit(s, j);
}

static void
cmd_simple_mbox(struct imap *s, struct cmd *c, int op, const char *usage)
{
	struct job *j;
	char *name;

	if (c->n != 1 || (name = mbox_arg(&c->a[0])) == NULL) {
		bad(s, c->tag, usage);
		return;
	}
	if (op == J_CREATE) {
		size_t l = strlen(name);
		while (l > 0 && name[l - 1] == '.')
			name[--l] = '\0';
	}
	if (!mbox_is_inbox(name) && !mbox_name_valid(name, strlen(name))) {
		out(s, "%s NO [CANNOT] Invalid mailbox name", c->tag);
		free(name);
		return;
	}
	if (op == J_DELETE && s->mb && !strcmp(s->mb->name, name)) {
		out(s, "%s NO [INUSE] Mailbox is selected", c->tag);
		free(name);
		return;
	}
	j = newjob(op, c->tag);
	j->a1 = name;
	submit(s, j);
}

static void
cmd_rename(struct imap *s, struct cmd *c)
{
	struct job *j;
	char *a, *b;

	if (c->n != 2 || (a = mbox_arg(&c->a[0])) == NULL) {
		bad(s, c->tag, "Usage: RENAME old new");
		return;
	}
	if ((b = mbox_arg(&c->a[1])) == NULL) {
		free(a);
		bad(s, c->tag, "Usage: RENAME old new");
		return;
	}
	j = newjob(J_RENAME, c->tag);
	j->a1 = a;
	j->a2 = b;
	submit(s, j);
}

static void
cmd_list(struct imap *s, struct cmd *c, bool lsub)
{
	struct job *j;
	size_t i = 0;

	/* LIST (SPECIAL-USE) "" "*" / LIST "" "*" RETURN (...): options accepted, attributes always sent */
	if (c->n >= 1 && c->a[0].type == IA_LIST && !lsub)
		i = 1;
	if (c->n < i + 2 || c->a[i].type == IA_LIST) {
		bad(s, c->tag, "Usage: LIST reference pattern");
		return;
	}
	j = newjob(lsub ? J_LSUB : J_LIST, c->tag);
	j->a1 = imap_arg_str(&c->a[i]);
	if (c->a[i + 1].type == IA_LIST) {
		j->a2 = c->a[i + 1].nlist > 0 ? imap_arg_str(&c->a[i + 1].list[0]) : xstrdup("");
		if (j->a2 == NULL)
			j->a2 = xstrdup("");
	} else
		j->a2 = imap_arg_str(&c->a[i + 1]);
	for (size_t k = i + 2; k + 1 < c->n; k++)
		if (imap_arg_is(&c->a[k], "RETURN") && c->a[k + 1].type == IA_LIST)
			for (size_t x = 0; x < c->a[k + 1].nlist; x++)
				if (imap_arg_is(&c->a[k + 1].list[x], "SUBSCRIBED"))
					j->flags = 1;
	submit(s, j);
}

static void
cmd_status(struct imap *s, struct cmd *c)
{
	static const char *const names[] = { "MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE" };
	struct job *j;
	char *name;

	if (c->n != 2 || c->a[1].type != IA_LIST || (name = mbox_arg(&c->a[0])) == NULL) {
		bad(s, c->tag, "Usage: STATUS mailbox (items)");
		return;
	}
	j = newjob(J_STATUS, c->tag);
	j->a1 = name;
	for (size_t i = 0; i < c->a[1].nlist; i++) {
		size_t k;
		for (k = 0; k < ARRAY_SIZE(names); k++)
			if (imap_arg_is(&c->a[1].list[i], names[k]))
				break;
		if (k == ARRAY_SIZE(names)) {
			job_free(j);
			bad(s, c->tag, "Unknown STATUS item");
			return;
		}
		j->statusitems[k] = true;
	}
	submit(s, j);
}

static bool
parse_section(const char *p, size_t len, struct fitem *it)
{
	/* p: inside [...], e.g. "1.2.HEADER.FIELDS (A B)" */
	size_t i = 0, pl = 0;

	while (i < len && (isdigit((unsigned char)p[i]) || p[i] == '.')) {
		if (p[i] == '.' && (i + 1 >= len || !isdigit((unsigned char)p[i + 1]))) {
			i++;
			break;
		}
		if (pl + 1 < sizeof(it->part))
			it->part[pl++] = p[i];
		else
			return false;
		i++;
	}
	it->part[pl] = '\0';
	if (pl > 0 && it->part[pl - 1] == '.')
		it->part[--pl] = '\0';
	p += i;
	len -= i;
	if (len == 0) {
		it->sect = S_ALL;
		return true;
	}
	if (len == 6 && ascii_prefix_ci(p, 6, "HEADER")) {
		it->sect = S_HEADER;
		return true;
	}
	if (len == 4 && ascii_prefix_ci(p, 4, "TEXT")) {
		it->sect = S_TEXT;
		return true;
	}
	if (len == 4 && ascii_prefix_ci(p, 4, "MIME") && pl > 0) {
		it->sect = S_MIME;
		return true;
	}
	bool not = ascii_prefix_ci(p, len, "HEADER.FIELDS.NOT ");
	if (!not && !ascii_prefix_ci(p, len, "HEADER.FIELDS "))
		return false;
	it->sect = not ? S_FIELDS_NOT : S_FIELDS;
	size_t skip = not ? 18 : 14;
	struct imap_arg *a;
	size_t n;
	const char *e;
	if (imap_args_parse(p + skip, len - skip, &a, &n, &e) < 0)
		return false;
	if (n != 1 || a[0].type != IA_LIST || a[0].nlist == 0) {
		imap_args_free(a, n);
		return false;
	}
	for (size_t k = 0; k < a[0].nlist; k++) {
		if (a[0].list[k].type == IA_LIST)
			continue;
		it->fields = xreallocarray(it->fields, it->nfields + 1, sizeof(*it->fields));
		it->fields[it->nfields++] = imap_arg_str(&a[0].list[k]);
	}
	imap_args_free(a, n);
	return true;
}

static bool
parse_fitem(const struct imap_arg *a, struct job *j)
{
	static const struct { const char *n; int k; } simple[] = {
		{ "FLAGS", F_FLAGS }, { "UID", F_UID }, { "INTERNALDATE", F_INTERNALDATE },
		{ "RFC822.SIZE", F_SIZE }, { "ENVELOPE", F_ENVELOPE }, { "BODY", F_BODY },
		{ "BODYSTRUCTURE", F_BODYSTRUCTURE }, { "RFC822", F_RFC822 },
		{ "RFC822.HEADER", F_RFC822_HEADER }, { "RFC822.TEXT", F_RFC822_TEXT },
	};
	struct fitem it;

	if (a->type != IA_ATOM || j->nitems >= 100)
		return false;
	memset(&it, 0, sizeof(it));
	for (size_t i = 0; i < ARRAY_SIZE(simple); i++)
		if (imap_arg_is(a, simple[i].n)) {
			it.kind = simple[i].k;
			if (it.kind == F_RFC822 || it.kind == F_RFC822_TEXT)
				j->setseen = true;
			goto add;
		}
	{
		const char *p = a->s, *lb = memchr(a->s, '[', a->len), *rb;
		size_t hl;
		if (lb == NULL)
			return false;
		hl = (size_t)(lb - p);
		if (hl == 4 && ascii_prefix_ci(p, 4, "BODY"))
			it.peek = false;
		else if (hl == 9 && ascii_prefix_ci(p, 9, "BODY.PEEK"))
			it.peek = true;
		else
			return false;
		rb = memchr(lb, ']', a->len - hl);
		if (rb == NULL || !parse_section(lb + 1, (size_t)(rb - lb - 1), &it))
			return false;
		it.kind = F_SECTION;
		const char *rest = rb + 1, *end = a->s + a->len;
		struct buf nm = BUF_INIT;
		buf_adds(&nm, "BODY");
		/* echoed in upper case, field names too (as Dovecot does) */
		for (const char *q = lb; q <= rb; q++)
			buf_addc(&nm, (char)toupper((unsigned char)*q));
		if (rest < end) {
			unsigned long long o = 0, l = 0;
			int c1 = 0, c2 = 0;
			if (*rest != '<')
				goto badp;
			for (rest++; rest < end && isdigit((unsigned char)*rest) && c1 < 10; rest++, c1++)
				o = o * 10 + (unsigned)(*rest - '0');
			if (rest >= end || *rest != '.' || c1 == 0)
				goto badp;
			for (rest++; rest < end && isdigit((unsigned char)*rest) && c2 < 10; rest++, c2++)
				l = l * 10 + (unsigned)(*rest - '0');
			if (rest + 1 != end || *rest != '>' || c2 == 0 || o > UINT32_MAX || l > UINT32_MAX || l == 0)
				goto badp;
			it.partial = true;
			it.poff = (uint32_t)o;
			it.plen = (uint32_t)l;
			buf_printf(&nm, "<%u>", it.poff);
		}
		it.name = buf_steal(&nm);
		if (!it.peek)
			j->setseen = true;
		goto add;
badp:
		buf_free(&nm);
		for (size_t k = 0; k < it.nfields; k++)
			free(it.fields[k]);
		free(it.fields);
		return false;
	}
add:
	j->items = xreallocarray(j->items, j->nitems + 1, sizeof(*j->items));
	j->items[j->nitems++] = it;
	return true;
}

static void
cmd_fetch(struct imap *s, struct cmd *c)
{
	struct job *j = newjob(J_FETCH, c->tag);
	bool okp = true;

	j->uid = c->uid;
	if (c->n < 2 || !targets(s, &c->a[0], c->uid, j)) {
		job_free(j);
		bad(s, c->tag, "Usage: FETCH sequence-set items");
		return;
	}
	const struct imap_arg *it = &c->a[1];
	if (it->type == IA_LIST) {
		for (size_t i = 0; i < it->nlist && okp; i++)
			okp = parse_fitem(&it->list[i], j);
		okp = okp && it->nlist > 0;
	} else if (imap_arg_is(it, "ALL") || imap_arg_is(it, "FAST") || imap_arg_is(it, "FULL")) {
		static const char *const all[] = { "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY" };
		size_t n = imap_arg_is(it, "FAST") ? 3 : imap_arg_is(it, "ALL") ? 4 : 5;
		for (size_t i = 0; i < n; i++) {
			struct imap_arg a = { IA_ATOM, all[i], strlen(all[i]), NULL, 0, NULL };
			parse_fitem(&a, j);
		}
	} else {
		okp = parse_fitem(it, j);
	}
	if (!okp || c->n > 2) {
		job_free(j);
		bad(s, c->tag, "Invalid FETCH item");
		return;
	}
	if (s->readonly)
		j->setseen = false;
	if (j->setseen) {
		/* the answer carries the new FLAGS */
		bool has = false;
		for (size_t i = 0; i < j->nitems; i++)
			has |= j->items[i].kind == F_FLAGS;
		if (!has) {
			struct imap_arg a = { IA_ATOM, "FLAGS", 5, NULL, 0, NULL };
			if (parse_fitem(&a, j))
				j->items[j->nitems - 1].implicit = true;
		}
	}
	submit(s, j);
}

static void
cmd_store(struct imap *s, struct cmd *c)
{
	struct job *j = newjob(J_STORE, c->tag);
	const struct imap_arg *k;

	j->uid = c->uid;
	if (c->n != 3 || !targets(s, &c->a[0], c->uid, j) || c->a[1].type != IA_ATOM) {
		job_free(j);
		bad(s, c->tag, "Usage: STORE sequence-set [+-]FLAGS[.SILENT] (flags)");
		return;
	}
	k = &c->a[1];
	const char *p = k->s;
	size_t l = k->len;
	j->mode = '=';
	if (l > 0 && (*p == '+' || *p == '-')) {
		j->mode = *p;
		p++;
		l--;
	}
	if (l == 12 && ascii_prefix_ci(p, 12, "FLAGS.SILENT"))
		j->silent = true;
	else if (!(l == 5 && ascii_prefix_ci(p, 5, "FLAGS"))) {
		job_free(j);
		bad(s, c->tag, "Unknown STORE item");
		return;
	}
	if (c->a[2].type == IA_LIST ? !parse_flags(c->a[2].list, c->a[2].nlist, &j->flags, &j->kw, &j->nkw)
	    : !parse_flags(&c->a[2], 1, &j->flags, &j->kw, &j->nkw)) {
		job_free(j);
		bad(s, c->tag, "Invalid flag");
		return;
	}
	if (s->readonly) {
		job_free(j);
		out(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	submit(s, j);
}

static void
cmd_search(struct imap *s, struct cmd *c)
{
	struct job *j = newjob(J_SEARCH, c->tag);
	size_t i = 0;

	j->uid = c->uid;
	if (c->n >= 2 && imap_arg_is(&c->a[0], "CHARSET")) {
		char *cs = imap_arg_str(&c->a[1]);
		bool known = cs && (!ascii_strcasecmp(cs, "UTF-8") || !ascii_strcasecmp(cs, "US-ASCII"));
		free(cs);
		if (!known) {
			job_free(j);
			out(s, "%s NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset", c->tag);
			return;
		}
		i = 2;
	}
	j->q.op = Q_AND;
	while (i < c->n) {
		j->q.kids = xreallocarray(j->q.kids, j->q.nkids + 1, sizeof(*j->q.kids));
		if (!query_parse(c->a, c->n, &i, &j->q.kids[j->q.nkids], 0)) {
			j->q.nkids++;
			job_free(j);
			bad(s, c->tag, "Invalid search criteria");
			return;
		}
		j->q.nkids++;
	}
	if (j->q.nkids == 0) {
		job_free(j);
		bad(s, c->tag, "Missing search criteria");
		return;
	}
	/* every message of the view is a candidate */
	j->seqs = xcalloc(s->vn + 1, sizeof(*j->seqs));
	j->uids = xcalloc(s->vn + 1, sizeof(*j->uids));
	for (size_t k = 0; k < s->vn; k++) {
		j->seqs[k] = (uint32_t)(k + 1);
		j->uids[k] = s->vuid[k];
	}
	j->n = s->vn;
	submit(s, j);
}

static void
cmd_copy(struct imap *s, struct cmd *c, bool move)
{
	struct job *j = newjob(move ? J_MOVE : J_COPY, c->tag);

	j->uid = c->uid;
	if (c->n != 2 || !targets(s, &c->a[0], c->uid, j) || (j->a1 = mbox_arg(&c->a[1])) == NULL) {
		job_free(j);
		bad(s, c->tag, move ? "Usage: MOVE sequence-set mailbox" : "Usage: COPY sequence-set mailbox");
		return;
	}
	if (move && s->readonly) {
		job_free(j);
		out(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	if (j->n == 0) {
		job_free(j);
		out(s, "%s OK %s completed (nothing to do)", c->tag, move ? "MOVE" : "COPY");
		return;
	}
	submit(s, j);
}

static void
cmd_expunge(struct imap *s, struct cmd *c)
{
	struct job *j = newjob(J_EXPUNGE, c->tag);

	j->uid = c->uid;
	if (c->uid && (c->n != 1 || !targets(s, &c->a[0], true, j))) {
		job_free(j);
		bad(s, c->tag, "Usage: UID EXPUNGE uid-set");
		return;
	}
	if (!c->uid && c->n != 0) {
		job_free(j);
		bad(s, c->tag, "EXPUNGE takes no arguments");
		return;
	}
	if (s->readonly) {
		job_free(j);
		out(s, "%s NO [READ-ONLY] Mailbox is read-only", c->tag);
		return;
	}
	if (c->uid && j->n == 0) {
		job_free(j);
		out(s, "%s OK UID EXPUNGE completed", c->tag);
		return;
	}
	submit(s, j);
}

static void
cmd_close(struct imap *s, struct cmd *c, bool unselect)
{
	if (unselect || s->readonly) {
		mbox_close(s->mb);
		s->mb = NULL;
		view_reset(s);
		s->state = I_AUTH;
		out(s, "%s OK %s completed", c->tag, unselect ? "UNSELECT" : "CLOSE");
		return;
	}
	submit(s, newjob(J_CLOSE, c->tag));
}

static void
cmd_append(struct imap *s, struct cmd *c)
{
	struct job *j;
	size_t i = 1;
	unsigned flags = 0;
	time_t date = 0;
	char *name;
	char **kw = NULL;
	size_t nkw = 0;

	if (c->n < 2 || (name = mbox_arg(&c->a[0])) == NULL) {
		bad(s, c->tag, "Usage: APPEND mailbox [(flags)] [date] literal");
		return;
	}
	if (c->a[i].type == IA_LIST) {
		if (!parse_flags(c->a[i].list, c->a[i].nlist, &flags, &kw, &nkw)) {
			free(name);
			kw_free(kw, nkw);
			bad(s, c->tag, "Invalid flag");
			return;
		}
		i++;
	}
	if (i < c->n && c->a[i].type == IA_STRING) {
		if (!imap_datetime_parse(c->a[i].s, c->a[i].len, &date)) {
			free(name);
			kw_free(kw, nkw);
			bad(s, c->tag, "Invalid date-time");
			return;
		}
		i++;
	}
	if (i + 1 != c->n || c->a[i].type != IA_LITERAL) {
		free(name);
		kw_free(kw, nkw);
		bad(s, c->tag, "Usage: APPEND mailbox [(flags)] [date] literal");
		return;
	}
	if (c->a[i].len == 0) {
		free(name);
		kw_free(kw, nkw);
		out(s, "%s NO Empty message", c->tag);
		return;
	}
	j = newjob(J_APPEND, c->tag);
	j->a1 = name;
	j->flags = flags;
	j->kw = kw;
	j->nkw = nkw;
	j->date = date;
	j->data = xmalloc(c->a[i].len);
	memcpy(j->data, c->a[i].s, c->a[i].len);
	j->datalen = c->a[i].len;
	submit(s, j);
	/* j->mb: the selected mailbox, used if it is the target */
}

static void
cmd_idle(struct imap *s, struct cmd *c)
{
	struct timeval tv = { IMAP_IDLE_POLL, 0 };

	moat_strlcpy(s->idletag, c->tag, sizeof(s->idletag));
	s->idling = true;
	out(s, "+ idling");
	if (s->state == I_SELECTED) {
		if (s->timer == NULL)
			s->timer = evtimer_new(W->base, idle_tick, s);
		evtimer_add(s->timer, &tv);
	}
}

static void
cmd_id(struct imap *s, struct cmd *c)
{
	out(s, "* ID (\"name\" \"moat\" \"vendor\" \"moat\")");
	out(s, "%s OK ID completed", c->tag);
}

static void
cmd_enable(struct imap *s, struct cmd *c)
{
	if (c->n == 0) {
		bad(s, c->tag, "Usage: ENABLE capability...");
		return;
	}
	out(s, "* ENABLED");
	out(s, "%s OK ENABLE completed", c->tag);
}

static void
cmd_namespace(struct imap *s, struct cmd *c)
{
	out(s, "* NAMESPACE ((\"\" \".\")) NIL NIL");
	out(s, "%s OK NAMESPACE completed", c->tag);
}

static void
cmd_check(struct imap *s, struct cmd *c)
{
	struct job *j = newjob(J_POLL, c->tag);
	j->a1 = xstrdup("CHECK");
	submit(s, j);
}

enum { C_CAPABILITY, C_NOOP, C_LOGOUT, C_STARTTLS, C_LOGIN, C_AUTHENTICATE, C_SELECT, C_EXAMINE,
	C_CREATE, C_DELETE, C_RENAME, C_SUBSCRIBE, C_UNSUBSCRIBE, C_LIST, C_LSUB, C_STATUS, C_APPEND,
	C_CHECK, C_CLOSE, C_UNSELECT, C_EXPUNGE, C_SEARCH, C_FETCH, C_STORE, C_COPY, C_MOVE, C_UID,
	C_IDLE, C_ID, C_ENABLE, C_NAMESPACE };

static const struct {
	const char *name;
	unsigned states;
	int     id;
} commands[] = {
	{ "CAPABILITY", ST_N | ST_A | ST_S, C_CAPABILITY },
	{ "NOOP", ST_N | ST_A | ST_S, C_NOOP },
	{ "LOGOUT", ST_N | ST_A | ST_S, C_LOGOUT },
	{ "STARTTLS", ST_N, C_STARTTLS },
	{ "LOGIN", ST_N, C_LOGIN },
	{ "AUTHENTICATE", ST_N, C_AUTHENTICATE },
	{ "ID", ST_N | ST_A | ST_S, C_ID },
	{ "ENABLE", ST_A | ST_S, C_ENABLE },
	{ "NAMESPACE", ST_A | ST_S, C_NAMESPACE },
	{ "SELECT", ST_A | ST_S, C_SELECT },
	{ "EXAMINE", ST_A | ST_S, C_EXAMINE },
	{ "CREATE", ST_A | ST_S, C_CREATE },
	{ "DELETE", ST_A | ST_S, C_DELETE },
	{ "RENAME", ST_A | ST_S, C_RENAME },
	{ "SUBSCRIBE", ST_A | ST_S, C_SUBSCRIBE },
	{ "UNSUBSCRIBE", ST_A | ST_S, C_UNSUBSCRIBE },
	{ "LIST", ST_A | ST_S, C_LIST },
	{ "LSUB", ST_A | ST_S, C_LSUB },
	{ "STATUS", ST_A | ST_S, C_STATUS },
	{ "APPEND", ST_A | ST_S, C_APPEND },
	{ "IDLE", ST_A | ST_S, C_IDLE },
	{ "CHECK", ST_S, C_CHECK },
	{ "CLOSE", ST_S, C_CLOSE },
	{ "UNSELECT", ST_S, C_UNSELECT },
	{ "EXPUNGE", ST_S, C_EXPUNGE },
	{ "SEARCH", ST_S, C_SEARCH },
	{ "FETCH", ST_S, C_FETCH },
	{ "STORE", ST_S, C_STORE },
	{ "COPY", ST_S, C_COPY },
	{ "MOVE", ST_S, C_MOVE },
	{ "UID", ST_S, C_UID },
};

static void
dispatch(struct imap *s, int id, struct cmd *c)
{
	switch (id) {
	case C_CAPABILITY: cmd_capability(s, c); break;
	case C_NOOP: cmd_noop(s, c); break;
	case C_LOGOUT: cmd_logout(s, c); break;
	case C_STARTTLS: cmd_starttls(s, c); break;
	case C_LOGIN: cmd_login(s, c); break;
	case C_AUTHENTICATE: cmd_authenticate(s, c); break;
	case C_ID: cmd_id(s, c); break;
	case C_ENABLE: cmd_enable(s, c); break;
	case C_NAMESPACE: cmd_namespace(s, c); break;
	case C_SELECT: cmd_select(s, c, false); break;
	case C_EXAMINE: cmd_select(s, c, true); break;
	case C_CREATE: cmd_simple_mbox(s, c, J_CREATE, "Usage: CREATE mailbox"); break;
	case C_DELETE: cmd_simple_mbox(s, c, J_DELETE, "Usage: DELETE mailbox"); break;
	case C_RENAME: cmd_rename(s, c); break;
	case C_SUBSCRIBE: cmd_simple_mbox(s, c, J_SUB, "Usage: SUBSCRIBE mailbox"); break;
	case C_UNSUBSCRIBE: cmd_simple_mbox(s, c, J_UNSUB, "Usage: UNSUBSCRIBE mailbox"); break;
	case C_LIST: cmd_list(s, c, false); break;
	case C_LSUB: cmd_list(s, c, true); break;
	case C_STATUS: cmd_status(s, c); break;
	case C_APPEND: cmd_append(s, c); break;
	case C_IDLE: cmd_idle(s, c); break;
	case C_CHECK: cmd_check(s, c); break;
	case C_CLOSE: cmd_close(s, c, false); break;
	case C_UNSELECT: cmd_close(s, c, true); break;
	case C_EXPUNGE: cmd_expunge(s, c); break;
	case C_SEARCH: cmd_search(s, c); break;
	case C_FETCH: cmd_fetch(s, c); break;
	case C_STORE: cmd_store(s, c); break;
	case C_COPY: cmd_copy(s, c, false); break;
	case C_MOVE: cmd_copy(s, c, true); break;
	}
}

static bool
valid_tag(const char *p, size_t len)
{
	if (len == 0 || len >= 128)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c <= 0x20 || c >= 0x7f || c == '(' || c == ')' || c == '{' || c == '%' || c == '*' ||
		    c == '"' || c == '\\' || c == '+' || c == ']')
			return false;
	}
	return true;
}

/* one complete command in s->rd.cmd */
static void
command(struct imap *s)
{
	const char *p = s->rd.cmd.data ? s->rd.cmd.data : "";
	size_t len = s->rd.cmd.len, i;
	char tag[128], name[32];
	struct imap_arg *a = NULL;
	size_t n = 0;
	const char *error;
	struct cmd c;
	size_t k;

	s->ncmds++;
	if (s->authcont) {
		s->authcont = false;
		auth_plain(s, s->authtag, p, len);
		return;
	}
	if (s->idling) {
		if (len == 4 && ascii_prefix_ci(p, 4, "DONE")) {
			s->idling = false;
			if (s->timer)
				evtimer_del(s->timer);
			out(s, "%s OK IDLE terminated", s->idletag);
		} else {
			s->idling = false;
			bad(s, s->idletag, "Expected DONE");
		}
		return;
	}
	for (i = 0; i < len && p[i] != ' '; i++)
		;
	if (!valid_tag(p, i) || memchr(p, '\0', len) != NULL) {
		out(s, "* BAD Invalid tag or command");
		if (++s->nbad >= IMAP_MAX_BAD) {
			out(s, "* BYE Too many invalid commands");
			close_after(s);
		}
		return;
	}
	memcpy(tag, p, i);
	tag[i] = '\0';
	if (i >= len) {
		bad(s, tag, "Missing command");
		return;
	}
	size_t st = ++i;
	while (i < len && p[i] != ' ')
		i++;
	if (i - st == 0 || i - st >= sizeof(name)) {
		bad(s, tag, "Unknown command");
		return;
	}
	memcpy(name, p + st, i - st);
	name[i - st] = '\0';
	memset(&c, 0, sizeof(c));
	c.tag = tag;
	for (k = 0; k < ARRAY_SIZE(commands); k++)
		if (!ascii_strcasecmp(name, commands[k].name))
			break;
	if (k == ARRAY_SIZE(commands)) {
		bad(s, tag, "Unknown command");
		return;
	}
	if (!(commands[k].states & (1u << s->state))) {
		if (s->state == I_NOAUTH)
			bad(s, tag, "Log in first");
		else if (commands[k].states == ST_N)
			bad(s, tag, "Already logged in");
		else
			bad(s, tag, "No mailbox selected");
		return;
	}
	if (i < len)
		i++;
	if (imap_args_parse(p + i, len - i, &a, &n, &error) < 0) {
		bad(s, tag, error);
		return;
	}
	c.a = a;
	c.n = n;
	if (commands[k].id == C_UID) {
		size_t u;
		static const struct { const char *n; int id; } uidcmds[] = {
			{ "FETCH", C_FETCH }, { "STORE", C_STORE }, { "SEARCH", C_SEARCH }, { "COPY", C_COPY },
			{ "MOVE", C_MOVE }, { "EXPUNGE", C_EXPUNGE },
		};
		for (u = 0; n > 0 && u < ARRAY_SIZE(uidcmds); u++)
			if (imap_arg_is(&a[0], uidcmds[u].n))
				break;
		if (n == 0 || u == ARRAY_SIZE(uidcmds)) {
			bad(s, tag, "Unknown UID command");
		} else {
			c.uid = true;
			c.a = a + 1;
			c.n = n - 1;
			dispatch(s, uidcmds[u].id, &c);
		}
	} else {
		dispatch(s, commands[k].id, &c);
	}
	imap_args_free(a, n);
}

/* the tag and command name of the command being read (for literal limits) */
static bool
reading_append(struct imap *s)
{
	const char *p = s->rd.cmd.data;
	size_t len = s->rd.cmd.len, i = 0;
	if (p == NULL)
		return false;
	while (i < len && p[i] != ' ')
		i++;
	return len - i > 7 && ascii_prefix_ci(p + i + 1, len - i - 1, "APPEND ");
}

static void
imap_process(struct imap *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);

	while (!s->busy && !s->closing && !s->starttls && !s->dead && !s->delaying) {
		struct evbuffer_iovec v;
		size_t used = 0;
		enum imap_rd r;

		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
			break;
		r = imap_reader_feed(&s->rd, v.iov_base, v.iov_len, &used);
		evbuffer_drain(in, used);
		if (r == IMAP_RD_MORE)
			continue;
		if (r == IMAP_RD_TOOLONG) {
			out(s, "* BAD Command line too long");
			if (++s->nbad >= IMAP_MAX_BAD) {
				out(s, "* BYE Too many invalid commands");
				close_after(s);
				return;
			}
			continue;
		}
		if (r == IMAP_RD_LITERAL) {
			size_t max = reading_append(s) ? (size_t)W->conf->message_size_limit : IMAP_MAX_LITERAL;
			if (s->rd.litsize > max) {
				if (s->rd.litplus) {
					out(s, "* BYE [TOOBIG] Literal too big");
					close_after(s);
					return;
				}
				/* the client waits for "+": refuse the command */
				const char *p = s->rd.cmd.data;
				size_t i = 0;
				while (i < s->rd.cmd.len && p[i] != ' ' && i < 120)
					i++;
				out(s, "%.*s NO [TOOBIG] Literal too big", valid_tag(p, i) ? (int)i : 1, valid_tag(p, i) ? p : "*");
				imap_reader_literal(&s->rd, false);
				if (++s->nbad >= IMAP_MAX_BAD) {
					out(s, "* BYE Too many invalid commands");
					close_after(s);
					return;
				}
				continue;
			}
			imap_reader_literal(&s->rd, true);
			if (!s->rd.litplus)
				out(s, "+ OK");
			continue;
		}
		/* a complete command */
		command(s);
		imap_reader_reset(&s->rd);
		if (evbuffer_get_length(bufferevent_get_output(s->bev)) > IMAP_MAX_OUT) {
			bufferevent_disable(s->bev, EV_READ);
			break;
		}
	}
	if (!s->closing && !s->dead && s->bev)
		set_timeout(s);
}

static void
imap_read(struct bufferevent *bev, void *arg)
{
	imap_process(arg);
}

static void
imap_write(struct bufferevent *bev, void *arg)
{
	struct imap *s = arg;

	if (s->closing) {
		imap_free(s);
		return;
	}
	if (s->fetchmore && !s->busy) {
		s->fetchmore = false;
		s->busy = true;
		pool_submit(W->pool, job_work, job_done, s);
		return;
	}
	if (s->starttls) {
		struct bufferevent *nb = tls_starttls(W->base, W->tls, s->bev);
		s->bev = nb;
		s->starttls = false;
		if (nb == NULL) {
			log_warnx("sid=%s event=starttls-failed proto=imap ip=%s", s->sid, s->ip);
			imap_free(s);
			return;
		}
		s->tls = true;
		imap_reader_reset(&s->rd);
		bufferevent_setcb(s->bev, imap_read, imap_write, imap_event, s);
		set_timeout(s);
		bufferevent_enable(s->bev, EV_READ | EV_WRITE);
		return;
	}
	if (!s->busy && !s->delaying && !(bufferevent_get_enabled(bev) & EV_READ)) {
		bufferevent_enable(bev, EV_READ);
		imap_process(s);
	}
}

static void
imap_event(struct bufferevent *bev, short what, void *arg)
{
	struct imap *s = arg;

	if (what & BEV_EVENT_CONNECTED)
		return;
	if (what & BEV_EVENT_TIMEOUT) {
		if (s->closing) {
			imap_free(s);
			return;
		}
		if (s->busy)
			return;
		log_info("sid=%s event=timeout proto=imap ip=%s", s->sid, s->ip);
		out(s, "* BYE Autologout; idle for too long");
		close_after(s);
		return;
	}
	if (s->busy) {
		s->dead = true;
		bufferevent_disable(bev, EV_READ | EV_WRITE);
		return;
	}
	imap_free(s);
}

static void
imap_free(struct imap *s)
{
	if (s->busy) {
		s->dead = true;
		return;
	}
	log_info("sid=%s event=disconnect proto=imap ip=%s commands=%d errors=%d duration=%.3f",
	    s->sid, s->ip, s->ncmds, s->nbad, (now_ms() - s->started_ms) / 1000.0);
	metric_gauge_add(M_SESSIONS_OPEN, s->listen->spec, NULL, -1);
	if (s->prev)
		s->prev->next = s->next;
	else
		sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	nsessions--;
	if (s->timer)
		event_free(s->timer);
	if (s->bev)
		bufferevent_free(s->bev);
	if (s->job) {
		if (s->job->op == J_SELECT && s->job->mb)
			mbox_close(s->job->mb);
		job_free(s->job);
	}
	mbox_close(s->mb);
	view_reset(s);
	imap_reader_free(&s->rd);
	free(s);
}

static void
on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	const struct listen_conf *l = arg;
	struct imap *s;
	int one = 1, port;
	bool implicit = l->kind == LISTEN_IMAPS || l->tls == TLS_IMPLICIT;

	s = xcalloc(1, sizeof(*s));
	net_sid(s->sid);
	s->listen = l;
	net_peer(sa, s->ip, sizeof(s->ip), &port);
	s->started_ms = now_ms();
	imap_reader_init(&s->rd, IMAP_MAX_LINE, (size_t)W->conf->message_size_limit + IMAP_MAX_LINE);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (implicit) {
		if (W->tls == NULL) {
			log_warnx("imap: %s: implicit TLS but no certificate configured", l->spec);
			close(fd);
			imap_reader_free(&s->rd);
			free(s);
			return;
		}
		s->bev = tls_accept(W->base, W->tls, fd);
		s->tls = true;
	} else {
		s->bev = bufferevent_socket_new(W->base, fd, BEV_OPT_CLOSE_ON_FREE);
	}
	if (s->bev == NULL) {
		close(fd);
		imap_reader_free(&s->rd);
		free(s);
		return;
	}
	bufferevent_setcb(s->bev, imap_read, imap_write, imap_event, s);
	s->next = sessions;
	if (sessions)
		sessions->prev = s;
	sessions = s;
	nsessions++;
	metric_inc(M_CONNECTIONS, l->spec, NULL);
	metric_gauge_add(M_SESSIONS_OPEN, l->spec, NULL, 1);
	log_info("sid=%s event=connect proto=imap ip=%s listener=%s tls=%s", s->sid, s->ip, l->spec,
	    s->tls ? "implicit" : "no");
	if (W->draining) {
		out(s, "* BYE Server shutting down");
		close_after(s);
		return;
	}
	s->state = I_NOAUTH;
	struct buf cap = BUF_INIT;
	capability(s, &cap);
	out(s, "* OK [CAPABILITY %s] moat IMAP4rev1 ready", cap.data);
	buf_free(&cap);
	set_timeout(s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

int
imap_listen(const struct listen_conf *l)
{
	/* lib/net: pauses on EMFILE instead of spinning */
	return net_listen(W->base, l->fd, on_accept, (void *)l, "imap") ? 0 : -1;
}

size_t
imap_session_count(void)
{
	return nsessions;
}
