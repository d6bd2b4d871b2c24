/*
 * bayes.c - the Bayesian scorer: tokenizer, Robinson/Fisher chi-square
 * combining, learning and forgetting over a token store (bayes_store.h).
 *
 * Tokens (each counted once per message):
 *   body words      of the decoded text parts and the HTML rendered as text,
 *                   case-folded, 3..40 bytes (longer: "sk:<first char><len/10>"),
 *                   pure numbers skipped; an all-capitals word also as
 *                   written ("C:FREE")
 *   header words    prefixed per header: "s:" Subject, "f:" From, "t:" To/Cc,
 *                   "rt:" Reply-To, "rp:" Return-Path/Errors-To, "r:" Received
 *                   (the first BAYES_RECEIVED), "xm:" X-Mailer/User-Agent,
 *                   "mid:" Message-ID (and "mids:" its shape), "li:" List-Id,
 *                   "ct:" Content-Type, "pr:" Precedence, "xp:" X-Priority/Importance,
 *                   "lu:" List-Unsubscribe; "x:" the first words of any other
 *                   header; "H:<name>" for every header present (X-Spam-*,
 *                   X-Bogosity and the like are ignored: they are other
 *                   filters' verdicts)
 *   URLs            "u:<host>" and each parent domain down to two labels,
 *                   "up:" the words of the path and query
 *   attachments     "a:<type>", "ae:<extension>"; "p:<type>" per text part;
 *                   "mime:<flag>" for what the parser cut or found broken
 *
 * Combining (as bogofilter and SpamAssassin): per token Robinson's
 *   p = (s/ns) / (s/ns + h/nh),  f = (S*x + n*p) / (S + n),  n = s + h,
 * tokens with |f - 0.5| < min_dev ignored, at most max_tokens of the most
 * extreme kept, then Fisher's method:
 *   S = 1 - chi2Q(-2 sum ln(1-f), 2N),  H = 1 - chi2Q(-2 sum ln f, 2N),
 *   prob = (1 + S - H) / 2,
 * and beside it the log-odds ln(prob / (1 - prob)) computed from logarithms
 * of the gamma tails, so that it still ranks the messages whose prob has
 * rounded to exactly 0 or 1 (most of them, once the store is trained).
 *
 * Speed: the message's token ids are looked up in ascending order (the
 * token set is laid out by the ids' high bits, so it is nearly sorted
 * already) through one cursor; each thread keeps the counts it read in a
 * cache that is valid for one committed state of the store (see tc_get);
 * only the max_tokens most extreme clues are kept while scanning.
 *
 * Runs in: pool threads and the CLI (BLOCKING, disk).  Untrusted input: the
 * parsed message; tokens per message are capped (BAYES_MAX_TOKENS) and the
 * text read per message is capped (BAYES_MAX_TEXT).
 */
#include "config.h"
#include "bayes.h"
#include "bayes_store.h"
#include "mime.h"
#include "buf.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define BAYES_MAX_TOKENS   20000          /* distinct tokens per message */
#define BAYES_MAX_TEXT     (512 * 1024)   /* body bytes tokenized per message */
#define BAYES_MAX_HDR      4096           /* bytes of one header value tokenized */
#define BAYES_WORD_MIN     3
#define BAYES_WORD_MAX     40
#define BAYES_RECEIVED     10             /* Received headers tokenized (the last hops) */
#define BAYES_MAX_OTHER    256            /* bytes of another header's value tokenized */
#define BAYES_MAX_PATH     512            /* bytes of a URL's path and query tokenized */

struct bayes {
	const struct bayes_store_ops *ops;
	void              *store;
	void              *batch;           /* open write txn of a batch */
	pthread_t          batch_owner;     /* the thread that opened it: only it uses it */
	pthread_mutex_t    batch_mu;        /* guards batch and batch_owner */
	struct bayes_params p;
	uint64_t           inst;            /* unique per open: keys the read caches */
	char               err[256];
};

/*
 * Read cache, one per thread: the counts of the tokens this thread looked
 * up lately, valid for one snapshot of the store (the backend's snapshot()
 * id: LMDB's transaction id, which names one committed state).  A read in
 * a newer snapshot (anything was learned, by any process) or through
 * another handle empties it first, so it never answers with counts the
 * store no longer holds.  Common words recur from message to message: most
 * lookups of a message are answered here, at one probe of a 1 MiB table,
 * instead of by a B-tree descent.  Bounded: emptied when 3/4 full.
 */
#define TC_BITS  16
#define TC_SLOTS ((size_t)1 << TC_BITS)

struct tc_ent {
	uint64_t id;                    /* 0 = empty */
	uint32_t spam, ham;             /* 0/0: not in the store */
};

struct tcache {
	uint64_t inst, snap;
	size_t   n;
	struct tc_ent e[TC_SLOTS];
};

static pthread_key_t tc_key;
static bool tc_key_ok;                  /* else: no cache, every lookup to the store */
static pthread_once_t tc_once = PTHREAD_ONCE_INIT;
static uint64_t bayes_inst_next;

static void
tc_key_init(void)
{
	tc_key_ok = pthread_key_create(&tc_key, free) == 0;
}

/* this thread's cache, emptied unless it holds (inst, snap) */
static struct tcache *
tc_get(uint64_t inst, uint64_t snap)
{
	struct tcache *tc;

	pthread_once(&tc_once, tc_key_init);
	if (!tc_key_ok)
		return NULL;
	if ((tc = pthread_getspecific(tc_key)) == NULL) {
		tc = xcalloc(1, sizeof(*tc));
		if (pthread_setspecific(tc_key, tc) != 0) {
			free(tc);
			return NULL;
		}
	} else if (tc->inst == inst && tc->snap == snap && tc->n < TC_SLOTS / 4 * 3)
		return tc;
	memset(tc->e, 0, sizeof(tc->e));
	tc->n = 0;
	tc->inst = inst;
	tc->snap = snap;
	return tc;
}

static inline struct tc_ent *
tc_slot(struct tcache *tc, uint64_t id)
{
	size_t j = (size_t)(id >> (64 - TC_BITS));

	while (tc->e[j].id != 0 && tc->e[j].id != id)
		j = (j + 1) & (TC_SLOTS - 1);
	return &tc->e[j];
}

/* the batch's write txn if this thread opened it (the daemon shares one
 * handle between pool threads: a batch is one thread's) */
static void *
mybatch(struct bayes *b)
{
	void *t = NULL;
	pthread_mutex_lock(&b->batch_mu);
	if (b->batch && pthread_equal(b->batch_owner, pthread_self()))
		t = b->batch;
	pthread_mutex_unlock(&b->batch_mu);
	return t;
}

static void
setbatch(struct bayes *b, void *txn)
{
	pthread_mutex_lock(&b->batch_mu);
	b->batch = txn;
	b->batch_owner = pthread_self();
	pthread_mutex_unlock(&b->batch_mu);
}


static const char *const band_names[BAYES_NBANDS] = {
	"BAYES_00", "BAYES_05", "BAYES_20", "BAYES_40", "BAYES_50",
	"BAYES_60", "BAYES_80", "BAYES_95", "BAYES_99", "BAYES_999",
};

/* ---- parameters ---- */

void
bayes_params_default(struct bayes_params *p)
{
	/* SpamAssassin's default scores; BAYES_999 is its BAYES_99 + BAYES_999 */
	static const double scores[BAYES_NBANDS] = {
		-1.9, -0.5, -0.001, -0.001, 0.8, 1.5, 2.0, 3.0, 3.5, 3.7,
	};

	memset(p, 0, sizeof(*p));
	p->s = 0.05;
	p->x = 0.5;
	p->min_dev = 0.3;
	p->max_tokens = 25;
	p->min_learned = 200;
	memcpy(p->band_score, scores, sizeof(scores));
}

int
bayes_params_parse(struct bayes_params *p, const char *spec, char **err)
{
	char *dup = xstrdup(spec), *save = NULL, *kv;

	for (kv = strtok_r(dup, ", ", &save); kv; kv = strtok_r(NULL, ", ", &save)) {
		char *eq = strchr(kv, '='), *end;
		double v;

		if (eq == NULL)
			goto bad;
		*eq = '\0';
		errno = 0;
		v = strtod(eq + 1, &end);
		if (errno || *end || end == eq + 1 || v < 0)
			goto bad;
		if (strcmp(kv, "s") == 0)
			p->s = v;
		else if (strcmp(kv, "x") == 0 && v <= 1)
			p->x = v;
		else if (strcmp(kv, "min_dev") == 0 && v < 0.5)
			p->min_dev = v;
		else if (strcmp(kv, "max_tokens") == 0 && v <= 100000)
			p->max_tokens = (unsigned)v;
		else if (strcmp(kv, "min_learned") == 0 && v <= 1e9)
			p->min_learned = (unsigned)v;
		else
			goto bad;
	}
	free(dup);
	return 0;
bad:
	if (err) {
		*err = xmalloc(128);
		snprintf(*err, 128, "bad bayes parameter \"%s\"", kv ? kv : "");
	}
	free(dup);
	return -1;
}

/* ---- tokenizer ---- */

uint64_t
bayes_hash(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ULL;
	}
	/* murmur3 finaliser: spread FNV's low-entropy high bits */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/* decode one UTF-8 sequence; returns its length (invalid byte: 1, cp -1) */
static size_t
utf8_dec(const unsigned char *s, size_t len, long *cp)
{
	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if ((s[0] & 0xe0) == 0xc0 && len >= 2 && (s[1] & 0xc0) == 0x80) {
		*cp = ((long)(s[0] & 0x1f) << 6) | (s[1] & 0x3f);
		return *cp >= 0x80 ? 2 : (*cp = -1, 1);
	}
	if ((s[0] & 0xf0) == 0xe0 && len >= 3 && (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80) {
		*cp = ((long)(s[0] & 0x0f) << 12) | ((long)(s[1] & 0x3f) << 6) | (s[2] & 0x3f);
		return *cp >= 0x800 ? 3 : (*cp = -1, 1);
	}
	if ((s[0] & 0xf8) == 0xf0 && len >= 4 && (s[1] & 0xc0) == 0x80 &&
	    (s[2] & 0xc0) == 0x80 && (s[3] & 0xc0) == 0x80) {
		*cp = ((long)(s[0] & 0x07) << 18) | ((long)(s[1] & 0x3f) << 12) |
		    ((long)(s[2] & 0x3f) << 6) | (s[3] & 0x3f);
		return *cp >= 0x10000 && *cp <= 0x10ffff ? 4 : (*cp = -1, 1);
	}
	*cp = -1;
	return 1;
}

static long
fold_cp(long c)
{
	if (c < 0x80)
		return c >= 'A' && c <= 'Z' ? c + 32 : c;
	if (c >= 0xc0 && c <= 0xde && c != 0xd7)
		return c + 32;                                  /* Latin-1 */
	if (c >= 0x100 && c <= 0x137)
		return c | 1;                                   /* Latin Ext-A pairs */
	if (c >= 0x139 && c <= 0x148)
		return (c & 1) ? c + 1 : c;
	if (c >= 0x14a && c <= 0x177)
		return c | 1;
	if (c == 0x178)
		return 0xff;
	if (c >= 0x179 && c <= 0x17e)
		return (c & 1) ? c + 1 : c;
	if (c >= 0x391 && c <= 0x3ab && c != 0x3a2)
		return c + 32;                                  /* Greek */
	if (c >= 0x410 && c <= 0x42f)
		return c + 32;                                  /* Cyrillic */
	if (c >= 0x400 && c <= 0x40f)
		return c + 80;
	return c;
}

static size_t
utf8_put(long c, char *out)
{
	if (c < 0x80) {
		out[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		out[0] = (char)(0xc0 | (c >> 6));
		out[1] = (char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		out[0] = (char)(0xe0 | (c >> 12));
		out[1] = (char)(0x80 | ((c >> 6) & 0x3f));
		out[2] = (char)(0x80 | (c & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | (c >> 18));
	out[1] = (char)(0x80 | ((c >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((c >> 6) & 0x3f));
	out[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

size_t
bayes_fold(const char *in, size_t len, char *out, size_t outsz)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, o = 0;

	while (i < len && o + 4 < outsz) {
		long c;
		if (s[i] < 0x80) {                      /* fast path */
			out[o++] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
			i++;
			continue;
		}
		i += utf8_dec(s + i, len - i, &c);
		if (c < 0)
			continue;
		o += utf8_put(fold_cp(c), out + o);
	}
	if (o < outsz)
		out[o] = '\0';
	return o;
}

/* a word character: letters and digits, any non-ASCII code point except
 * the general punctuation and symbol blocks */
static bool
word_cp(long c)
{
	/* ASCII by table: no locale lookup per character */
	static const uint32_t ascii_word[4] = {
		0x00000000, 0x03ff0010,         /* '$', '0'-'9' */
		0x87fffffe, 0x07fffffe,         /* 'A'-'Z', '_', 'a'-'z' */
	};
	if (c < 0x80)
		return c >= 0 && (ascii_word[c >> 5] >> (c & 31)) & 1;
	if (c < 0xc0)
		return c == 0xaa || c == 0xb5 || c == 0xba;     /* ª µ º */
	if (c == 0xd7 || c == 0xf7)
		return false;
	if (c >= 0x2000 && c <= 0x2bff)                 /* punctuation, symbols, arrows */
		return false;
	if (c >= 0x3000 && c <= 0x303f)                 /* CJK punctuation */
		return false;
	if (c >= 0xfe00 && c <= 0xfe6f)
		return false;
	if (c >= 0xff00 && c <= 0xff0f)
		return false;
	if (c >= 0x1f000)                               /* emoji and the like */
		return false;
	return true;
}

struct tok_ctx {
	void (*emit)(void *, const char *, size_t);
	void  *arg;
	char   prev[BAYES_WORD_MAX * 4 + 8];    /* the last word, folded */
	size_t prevlen;
	bool   pairs;
	bool   caps;                    /* also emit all-capitals words as written */
};

static void
emit_word(struct tok_ctx *t, const char *prefix, const char *w, size_t wl)
{
	char tok[BAYES_WORD_MAX * 2 + 32];
	char f[BAYES_WORD_MAX * 4 + 8];
	size_t pl = strlen(prefix), fl;
	bool digits = true;

	for (size_t i = 0; i < wl; i++)
		if (!isdigit((unsigned char)w[i]) && w[i] != '.' && w[i] != '-' &&
		    w[i] != ',' && w[i] != '$' && w[i] != '\'') {
			digits = false;
			break;
		}
	if (digits) {
		t->prevlen = 0;
		return;
	}
	if (wl > BAYES_WORD_MAX) {
		/* SpamAssassin's "sk:" tokens: first char and length class */
		int n = snprintf(tok, sizeof(tok), "%ssk:%c%zu", prefix,
		    isalnum((unsigned char)w[0]) ? tolower((unsigned char)w[0]) : '?',
		    wl / 10 > 9 ? (size_t)9 : wl / 10);
		t->emit(t->arg, tok, (size_t)n);
		t->prevlen = 0;
		return;
	}
	fl = bayes_fold(w, wl, f, sizeof(f));
	if (fl < BAYES_WORD_MIN || fl > BAYES_WORD_MAX) {
		t->prevlen = 0;
		return;
	}
	if (pl + fl >= sizeof(tok))
		return;
	memcpy(tok, prefix, pl);
	memcpy(tok + pl, f, fl);
	t->emit(t->arg, tok, pl + fl);
	if (t->caps && fl == wl) {
		/* an all-capitals ASCII word also as written ("C:FREE"): shouting
		 * is a spam sign the folded word loses */
		size_t nup = 0;
		for (size_t i = 0; i < wl && isupper((unsigned char)w[i]); i++)
			nup++;
		if (nup == wl && pl + 2 + wl < sizeof(tok)) {
			memcpy(tok + pl, "C:", 2);
			memcpy(tok + pl + 2, w, wl);
			t->emit(t->arg, tok, pl + 2 + wl);
		}
	}
	if (t->pairs) {
		if (t->prevlen) {
			char pair[sizeof(t->prev) + BAYES_WORD_MAX * 4 + 16];
			size_t n = 0;
			memcpy(pair, prefix, pl);
			n = pl;
			memcpy(pair + n, t->prev, t->prevlen);
			n += t->prevlen;
			pair[n++] = ' ';
			memcpy(pair + n, f, fl);
			n += fl;
			t->emit(t->arg, pair, n);
		}
		memcpy(t->prev, f, fl);
		t->prevlen = fl;
	}
}

/* split text into words: runs of word characters, with '.', '-', '\'' and
 * '@' allowed between word characters (domains, "don't", e-mail addresses
 * stay whole) */
static void
tokenize_text(struct tok_ctx *t, const char *prefix, const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;

	t->prevlen = 0;
	while (i < len) {
		long c;
		size_t n, start;

		n = u[i] < 0x80 ? (c = u[i], 1) : utf8_dec(u + i, len - i, &c);
		if (!word_cp(c)) {
			i += n;
			if (c != ' ' && c != '\n' && c != '\t' && c != '\r')
				t->prevlen = c == ',' || c == '-' ? t->prevlen : 0;
			continue;
		}
		start = i;
		i += n;
		while (i < len) {
			long d;
			size_t m = u[i] < 0x80 ? (d = u[i], 1) : utf8_dec(u + i, len - i, &d);
			if (word_cp(d)) {
				i += m;
				continue;
			}
			if ((d == '.' || d == '-' || d == '\'' || d == '@') && i + 1 < len) {
				long e;
				size_t k = u[i + 1] < 0x80 ? (e = u[i + 1], 1) : utf8_dec(u + i + 1, len - i - 1, &e);
				(void)k;
				if (word_cp(e)) {
					i += m;
					continue;
				}
			}
			break;
		}
		emit_word(t, prefix, s + start, i - start);
	}
}

static bool
ignored_header(const char *name)
{
	static const char *const pfx[] = {
		"x-spam", "x-bogosity", "x-dspam", "x-crm114", "x-virus", "x-moat",
		"x-amavis", "x-ham-report", "x-quarantine",
	};
	for (size_t i = 0; i < ARRAY_SIZE(pfx); i++)
		if (ascii_strncasecmp(name, pfx[i], strlen(pfx[i])) == 0)
			return true;
	return false;
}

static void
emit_str(struct tok_ctx *t, const char *prefix, const char *s, size_t len)
{
	char tok[256];
	size_t pl = strlen(prefix);

	if (pl + len >= sizeof(tok))
		len = sizeof(tok) - pl - 1;
	memcpy(tok, prefix, pl);
	for (size_t i = 0; i < len; i++)
		tok[pl + i] = (char)tolower((unsigned char)s[i]);
	t->emit(t->arg, tok, pl + len);
}

/* "mids:" the shape of a Message-ID's local part: runs of digits "9", of
 * lowercase "a", uppercase "A", hex-looking mixed "x", other bytes as they are */
static void
msgid_shape(struct tok_ctx *t, const char *v, size_t vl)
{
	char shape[48];
	size_t n = 0, i = 0;
	char last = 0;

	while (i < vl && (v[i] == ' ' || v[i] == '<'))
		i++;
	for (; i < vl && v[i] != '@' && v[i] != '>' && n < sizeof(shape) - 1; i++) {
		unsigned char c = (unsigned char)v[i];
		char k = isdigit(c) ? '9' : islower(c) ? 'a' : isupper(c) ? 'A' :
		    c < 0x80 && isprint(c) ? (char)c : '?';
		if ((k == 'a' || k == 'A' || k == '9') && k == last)
			continue;
		shape[n++] = last = k;
	}
	if (n) {                                /* as it is: emit_str folds case */
		char tok[sizeof(shape) + 8];
		memcpy(tok, "mids:", 5);
		memcpy(tok + 5, shape, n);
		t->emit(t->arg, tok, 5 + n);
	}
}

void
bayes_tokenize(const struct mime_msg *m, void (*emit)(void *, const char *, size_t), void *arg)
{
	static const struct { const char *name, *prefix; } hdrs[] = {
		{ "subject", "s:" }, { "from", "f:" }, { "to", "t:" }, { "cc", "t:" },
		{ "reply-to", "rt:" }, { "return-path", "rp:" }, { "received", "r:" },
		{ "x-mailer", "xm:" }, { "user-agent", "xm:" }, { "message-id", "mid:" },
		{ "list-id", "li:" }, { "content-type", "ct:" }, { "sender", "f:" },
		{ "organization", "o:" }, { "x-originating-ip", "r:" },
		{ "precedence", "pr:" },
		{ "x-priority", "xp:" }, { "importance", "xp:" }, { "list-unsubscribe", "lu:" },
		{ "x-mailing-list", "li:" }, { "mailing-list", "li:" }, { "errors-to", "rp:" },
	};
	struct tok_ctx t = { .emit = emit, .arg = arg };
	size_t budget = BAYES_MAX_TEXT;
	unsigned nrcvd = 0;

	/* headers */
	for (size_t i = 0; i < mime_header_count(m); i++) {
		const struct mime_header *h = mime_header_at(m, i);
		size_t vl = strlen(h->value);

		if (ignored_header(h->name))
			continue;
		emit_str(&t, "H:", h->name, strlen(h->name));
		if (vl > BAYES_MAX_HDR)
			vl = BAYES_MAX_HDR;
		size_t k;
		for (k = 0; k < ARRAY_SIZE(hdrs); k++) {
			if (ascii_strcasecmp(h->name, hdrs[k].name) != 0)
				continue;
			if (k == 6 && ++nrcvd > BAYES_RECEIVED)
				break;                  /* the first Received lines only */
			t.pairs = k == 0;               /* pairs in the Subject */
			tokenize_text(&t, hdrs[k].prefix, h->value, vl);
			if (k == 9)
				msgid_shape(&t, h->value, vl);
			break;
		}
		if (k == ARRAY_SIZE(hdrs)) {    /* any other header: its first words */
			t.pairs = false;
			tokenize_text(&t, "x:", h->value, vl < BAYES_MAX_OTHER ? vl : BAYES_MAX_OTHER);
		}
	}
	/*
	 * body: words alone.  Pairs of adjacent words ("are there") were
	 * tokens too up to tokenizer 2; they crowd the max_tokens most extreme
	 * clues with evidence their two words already give, and turn many
	 * messages into a tie of strong spam against strong ham clues: without
	 * them the spam missed at 0.1% false positives fell from 129 to 110
	 * (seed 1) and 156 to 82 (seed 2) in bench/bayes-bench.sh.  The
	 * Subject keeps its pairs.
	 */
	t.pairs = false;
	t.caps = true;
	for (size_t i = 0; i < mime_text_count(m) && budget; i++) {
		const struct mime_text *x = mime_text_at(m, i);
		size_t l = x->len < budget ? x->len : budget;

		emit_str(&t, "p:", x->type, strlen(x->type));
		tokenize_text(&t, "", x->text, l);
		budget -= l;
	}
	t.pairs = false;
	t.caps = false;
	/* URL hosts and their parent domains */
	for (size_t i = 0; i < mime_url_count(m) && i < 200; i++) {
		const char *h = mime_url_at(m, i)->host, *d;
		size_t hl = strlen(h);

		emit_str(&t, "u:", h, hl);
		for (d = strchr(h, '.'); d && strchr(d + 1, '.'); d = strchr(d + 1, '.'))
			emit_str(&t, "u:", d + 1, hl - (size_t)(d + 1 - h));
		/* and the words of its path and query */
		const char *u = mime_url_at(m, i)->url, *path;
		if ((path = strstr(u, "://")) != NULL && (path = strchr(path + 3, '/')) != NULL) {
			size_t ul = strlen(path);
			tokenize_text(&t, "up:", path, ul < BAYES_MAX_PATH ? ul : BAYES_MAX_PATH);
		}
	}
	/* attachments */
	for (size_t i = 0; i < mime_attachment_count(m) && i < 100; i++) {
		const struct mime_attachment *a = mime_attachment_at(m, i);
		const char *dot = strrchr(a->filename, '.');

		emit_str(&t, "a:", a->type, strlen(a->type));
		if (dot && strlen(dot + 1) <= 8 && dot[1])
			emit_str(&t, "ae:", dot + 1, strlen(dot + 1));
	}
	{
		unsigned f = mime_flags(m);
		if (f & MIME_F_BROKEN)
			emit_str(&t, "mime:", "broken", 6);
		if (f & (MIME_F_DEPTH | MIME_F_PARTS))
			emit_str(&t, "mime:", "toomany", 7);
		if (mime_text_count(m) == 0)
			emit_str(&t, "mime:", "notext", 6);
	}
}

/* ---- per-message token set ---- */

struct tokset {
	uint64_t *ids;                  /* open addressing, 0 = empty */
	uint32_t *off;                  /* emission order: text offset + 1 with
	                                 * texts, else the token's number */
	size_t    cap, n;
	unsigned  shift;                /* slot = id >> shift: 64 - log2(cap) */
	struct buf texts;
	bool      keep_text;
	bool      full;
};

/*
 * Slots are chosen by the id's high bits, so walking the table in slot
 * order visits the ids in (nearly: linear probing moves a few by a slot or
 * two) ascending order, which is the token store's key order: lookups in
 * that order touch neighbouring B-tree pages one after another
 * (tokset_sorted() finishes the order with an insertion sort, which is
 * linear on such input).
 */
static void
tokset_init(struct tokset *ts, bool keep_text)
{
	memset(ts, 0, sizeof(*ts));
	ts->cap = 1024;
	ts->shift = 64 - 10;
	ts->ids = xcalloc(ts->cap, sizeof(*ts->ids));
	ts->keep_text = keep_text;
	ts->off = xcalloc(ts->cap, sizeof(*ts->off));
}

static void
tokset_free(struct tokset *ts)
{
	free(ts->ids);
	free(ts->off);
	buf_free(&ts->texts);
}

static void tokset_add_id(struct tokset *, uint64_t, const char *, size_t);

static void
tokset_grow(struct tokset *ts)
{
	struct tokset old = *ts;

	ts->cap *= 2;
	ts->shift--;
	ts->n = 0;
	ts->ids = xcalloc(ts->cap, sizeof(*ts->ids));
	ts->off = xcalloc(ts->cap, sizeof(*ts->off));
	for (size_t i = 0; i < old.cap; i++) {
		if (old.ids[i] == 0)
			continue;
		size_t j = (size_t)(old.ids[i] >> ts->shift);
		while (ts->ids[j])
			j = (j + 1) & (ts->cap - 1);
		ts->ids[j] = old.ids[i];
		ts->off[j] = old.off[i];
		ts->n++;
	}
	free(old.ids);
	free(old.off);
}

static void
tokset_add_id(struct tokset *ts, uint64_t id, const char *tok, size_t len)
{
	size_t j;

	if (id == 0)
		id = 1;
	if (ts->n >= BAYES_MAX_TOKENS) {
		ts->full = true;
		return;
	}
	if ((ts->n + 1) * 2 > ts->cap)
		tokset_grow(ts);
	for (j = (size_t)(id >> ts->shift); ts->ids[j]; j = (j + 1) & (ts->cap - 1))
		if (ts->ids[j] == id)
			return;
	ts->ids[j] = id;
	ts->n++;
	if (ts->keep_text) {
		ts->off[j] = (uint32_t)ts->texts.len + 1;
		buf_add(&ts->texts, tok, len);
		buf_addc(&ts->texts, '\0');
	} else
		ts->off[j] = (uint32_t)ts->n;
}

struct idoff {
	uint64_t id;
	uint32_t off;
};

static int
idoff_cmp(const void *a, const void *b)
{
	const struct idoff *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* the ids in ascending order (n of them, malloc'ed) and, with offp, their
 * emission order numbers in *offp */
static uint64_t *
tokset_sorted(const struct tokset *ts, uint32_t **offp)
{
	size_t cnt = ts->n ? ts->n : 1, n = 0, moves = 0;
	struct idoff *v = xmalloc(cnt * sizeof(*v));
	uint64_t *ids = xmalloc(cnt * sizeof(*ids));
	uint32_t *off = offp ? xmalloc(cnt * sizeof(*off)) : NULL;

	/*
	 * Slot order is id order but for linear probing's few displacements
	 * (and the wrap past the end): an insertion sort finishes it in
	 * linear time.  Ids crafted to collide could make one long probe
	 * run, so past a budget of moves qsort takes over.
	 */
	for (size_t i = 0; i < ts->cap; i++) {
		if (ts->ids[i] == 0)
			continue;
		struct idoff x = { ts->ids[i], ts->off[i] };
		size_t k = n++;
		while (k > 0 && v[k - 1].id > x.id && moves <= 8 * cnt) {
			v[k] = v[k - 1];
			k--;
			moves++;
		}
		v[k] = x;
	}
	if (moves > 8 * cnt)
		qsort(v, n, sizeof(*v), idoff_cmp);
	for (size_t i = 0; i < n; i++) {
		ids[i] = v[i].id;
		if (off)
			off[i] = v[i].off;
	}
	free(v);
	if (offp)
		*offp = off;
	return ids;
}

static void
tokset_emit(void *arg, const char *tok, size_t len)
{
	tokset_add_id(arg, bayes_hash(tok, len), tok, len);
}

/* ---- combining ---- */

double
bayes_chi2q(double x2, unsigned v)
{
	double m = x2 / 2.0, sum, term;

	if (x2 <= 0)
		return 1.0;
	sum = term = exp(-m);
	for (unsigned i = 1; i < v / 2; i++) {
		term *= m / i;
		sum += term;
	}
	return sum < 1.0 ? sum : 1.0;
}

/* ln(e^a + e^b) */
static double
lnadd(double a, double b)
{
	if (a == -INFINITY)
		return b;
	if (b == -INFINITY)
		return a;
	return a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
}

/*
 * ln Q(k, m) and ln P(k, m), the upper and lower regularised gamma
 * functions for integer k (Q(k, m) = chi2q(2m, 2k)), both accurate far
 * below the smallest double: Q's k terms summed as logarithms, P by its
 * series from the k-th term on when it is the smaller one, else as
 * ln(1 - Q).
 */
static void
ln_gamma_pq(unsigned k, double m, double *lnq, double *lnp)
{
	double lq = -INFINITY, lm = log(m);

	if (m <= 0) {
		*lnq = 0;
		*lnp = -INFINITY;
		return;
	}
	for (unsigned i = 0; i < k; i++)
		lq = lnadd(lq, (double)i * lm - lgamma((double)i + 1.0));
	lq -= m;
	if (lq > -0.6931471805599453) {         /* Q > 1/2: P is the small one */
		double t = (double)k * lm - lgamma((double)k + 1.0), sum = 1.0, term = 1.0;
		for (unsigned i = k + 1; i < k + 10000; i++) {
			term *= m / (double)i;
			sum += term;
			if (term < sum * 1e-17)
				break;
		}
		*lnp = t + log(sum) - m;
		if (lq > 0)
			lq = 0;
	} else
		*lnp = log1p(-exp(lq));
	*lnq = lq;
}

double
bayes_combine_ex(const double *f, size_t n, double *lodds)
{
	double ls = 0, lh = 0, S, H;

	if (lodds)
		*lodds = 0;
	if (n == 0)
		return 0.5;
	for (size_t i = 0; i < n; i++) {
		double p = f[i];
		if (p < 1e-6)
			p = 1e-6;
		if (p > 1 - 1e-6)
			p = 1 - 1e-6;
		ls += log(1.0 - p);
		lh += log(p);
	}
	S = 1.0 - bayes_chi2q(-2.0 * ls, (unsigned)(2 * n));
	H = 1.0 - bayes_chi2q(-2.0 * lh, (unsigned)(2 * n));
	if (lodds) {
		/*
		 * prob = (1 + S - H) / 2 = (Q(n, -lh) + P(n, -ls)) / 2 and
		 * 1 - prob = (P(n, -lh) + Q(n, -ls)) / 2: their log ratio,
		 * which keeps ranking messages where prob itself has rounded
		 * to 0 or 1 (most spam and ham of a well-trained store).
		 */
		double qs, ps, qh, ph;
		ln_gamma_pq((unsigned)n, -ls, &qs, &ps);
		ln_gamma_pq((unsigned)n, -lh, &qh, &ph);
		*lodds = lnadd(qh, ps) - lnadd(ph, qs);
	}
	return (1.0 + S - H) / 2.0;
}

double
bayes_combine(const double *f, size_t n)
{
	return bayes_combine_ex(f, n, NULL);
}

double
bayes_token_prob(uint32_t s, uint32_t h, uint64_t nspam, uint64_t nham, double S, double x)
{
	double n = (double)s + (double)h, p, rs, rh;

	if (n == 0 || nspam == 0 || nham == 0)
		return x;
	rs = (double)s / (double)nspam;
	rh = (double)h / (double)nham;
	p = rs / (rs + rh);
	return (S * x + n * p) / (S + n);
}

enum bayes_band
bayes_band_of(double p)
{
	if (p < 0.01) return BAYES_B00;
	if (p < 0.05) return BAYES_B05;
	if (p < 0.20) return BAYES_B20;
	if (p < 0.40) return BAYES_B40;
	if (p < 0.60) return BAYES_B50;
	if (p < 0.80) return BAYES_B60;
	if (p < 0.95) return BAYES_B80;
	if (p < 0.99) return BAYES_B95;
	if (p < 0.999) return BAYES_B99;
	return BAYES_B999;
}

const char *
bayes_band_name(enum bayes_band b)
{
	return b < BAYES_NBANDS ? band_names[b] : "BAYES_50";
}

/* ---- the handle ---- */

static void
seterr(struct bayes *b, const char *what)
{
	const char *e = b->ops->errstr(b->store);
	snprintf(b->err, sizeof(b->err), "%s: %s", what, e ? e : "failed");
}

const char *
bayes_error(const struct bayes *b)
{
	return b->err;
}

struct bayes *
bayes_open_path(const char *path, bool rdonly, char **err)
{
	struct bayes *b = xcalloc(1, sizeof(*b));
	const char *env = getenv("MOAT_BAYES_PARAMS");

	b->ops = &bayes_store_lmdb;
	b->inst = __atomic_add_fetch(&bayes_inst_next, 1, __ATOMIC_RELAXED);
	pthread_mutex_init(&b->batch_mu, NULL);
	bayes_params_default(&b->p);
	if (env && *env && bayes_params_parse(&b->p, env, err) < 0) {
		free(b);
		return NULL;
	}
	if ((b->store = b->ops->open(path, rdonly, err)) == NULL) {
		free(b);
		return NULL;
	}
	return b;
}

struct bayes *
bayes_open(const char *statedir, bool rdonly, char **err)
{
	struct buf p = BUF_INIT;
	struct bayes *b;

	buf_printf(&p, "%s/bayes.lmdb", statedir);
	b = bayes_open_path(p.data, rdonly, err);
	buf_free(&p);
	return b;
}

void
bayes_close(struct bayes **bp)
{
	struct bayes *b = *bp;

	if (b == NULL)
		return;
	if (b->batch)
		b->ops->abort(b->store, b->batch);
	pthread_mutex_destroy(&b->batch_mu);
	b->ops->close(b->store);
	free(b);
	*bp = NULL;
}

void
bayes_set_params(struct bayes *b, const struct bayes_params *p)
{
	b->p = *p;
}

void
bayes_digest(const char *raw, size_t len, uint8_t out[BAYES_DIGEST_LEN])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	const char *p = raw, *end = raw + len, *body = end;
	const char *mid = NULL;
	size_t midlen = 0;
	unsigned olen = 0;

	if (len >= 5 && memcmp(raw, "From ", 5) == 0) {
		const char *nl = memchr(raw, '\n', len);
		p = nl ? nl + 1 : end;
	}
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		size_t ll = (size_t)(le - p);
		if (ll && p[ll - 1] == '\r')
			ll--;
		if (ll == 0) {
			body = nl ? nl + 1 : end;
			break;
		}
		if (mid == NULL && ascii_prefix_ci(p, ll, "message-id:")) {
			mid = p + 11;
			midlen = ll - 11;
			while (midlen && (*mid == ' ' || *mid == '\t'))
				mid++, midlen--;
		}
		p = nl ? nl + 1 : end;
		body = p;
	}
	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
		fatalx("bayes_digest: EVP_DigestInit_ex failed");
	EVP_DigestUpdate(ctx, "mid:", 4);
	if (mid)
		EVP_DigestUpdate(ctx, mid, midlen);
	EVP_DigestUpdate(ctx, "\n", 1);
	EVP_DigestUpdate(ctx, body, (size_t)(end - body));
	EVP_DigestFinal_ex(ctx, out, &olen);
	EVP_MD_CTX_free(ctx);
}

static int
get_totals(struct bayes *b, void *txn, uint64_t *ns, uint64_t *nh)
{
	*ns = *nh = 0;
	if (b->ops->meta_get(b->store, txn, "nspam", ns) < 0 ||
	    b->ops->meta_get(b->store, txn, "nham", nh) < 0)
		return -1;
	return 0;
}

struct clue {
	double   f, dev;
	uint32_t spam, ham;
	uint32_t off;
};

/* clue order: most extreme first; ties in the order the message has them */
static inline bool
clue_before(const struct clue *x, const struct clue *y)
{
	return x->dev != y->dev ? x->dev > y->dev : x->off < y->off;
}

static int
clue_cmp(const void *a, const void *b)
{
	const struct clue *x = a, *y = b;
	return clue_before(x, y) ? -1 : clue_before(y, x) ? 1 : 0;
}

/*
 * Look up ids[0..n) (ascending) into out[], found[]: through the backend's
 * get_many when it has one (one cursor walking the key order), else one
 * get() each.
 */
static int
get_many(struct bayes *b, void *txn, const uint64_t *ids, size_t n,
    struct bayes_counts *out, uint8_t *found)
{
	if (b->ops->get_many)
		return b->ops->get_many(b->store, txn, ids, n, out, found);
	for (size_t i = 0; i < n; i++) {
		int g = b->ops->get(b->store, txn, ids[i], &out[i]);
		if (g < 0)
			return -1;
		found[i] = g == 0;
	}
	return 0;
}

/*
 * get_many() through this thread's read cache: the misses (still in
 * ascending order) go to the store, and their answers, found or not, into
 * the cache.  Not for a write transaction (its own changes are not a
 * committed snapshot).
 */
static int
lookup(struct bayes *b, void *txn, bool writing, const uint64_t *ids, size_t n,
    struct bayes_counts *out, uint8_t *found)
{
	struct tcache *tc = NULL;
	uint64_t snap, *mids;
	size_t *at, nm = 0;
	struct bayes_counts *mc;
	uint8_t *mf;
	int rc;

	if (!writing && b->ops->snapshot && b->ops->snapshot(b->store, txn, &snap) == 0)
		tc = tc_get(b->inst, snap);
	if (tc == NULL)
		return get_many(b, txn, ids, n, out, found);
	mids = xmalloc((n ? n : 1) * sizeof(*mids));
	at = xmalloc((n ? n : 1) * sizeof(*at));
	for (size_t i = 0; i < n; i++) {
		struct tc_ent *e = tc_slot(tc, ids[i]);
		if (e->id == ids[i]) {
			found[i] = e->spam || e->ham;
			out[i].spam = e->spam;
			out[i].ham = e->ham;
			out[i].atime = 0;
			continue;
		}
		mids[nm] = ids[i];
		at[nm++] = i;
	}
	mc = xmalloc((nm ? nm : 1) * sizeof(*mc));
	mf = xmalloc(nm ? nm : 1);
	if ((rc = get_many(b, txn, mids, nm, mc, mf)) == 0) {
		for (size_t k = 0; k < nm; k++) {
			size_t i = at[k];
			found[i] = mf[k];
			out[i] = mc[k];
			if (tc->n >= TC_SLOTS / 4 * 3)
				continue;       /* full: answered, not kept */
			struct tc_ent *e = tc_slot(tc, mids[k]);
			if (e->id == 0) {
				e->id = mids[k];
				e->spam = mf[k] ? mc[k].spam : 0;
				e->ham = mf[k] ? mc[k].ham : 0;
				tc->n++;
			}
		}
	}
	free(mids);
	free(at);
	free(mc);
	free(mf);
	return rc;
}

static int
classify(struct bayes *b, const struct mime_msg *m, struct bayes_result *r, bool texts)
{
	struct tokset ts;
	struct clue *clues;
	struct bayes_counts *cnt;
	uint8_t *found;
	uint64_t *ids;
	uint32_t *offs;
	double *f;
	size_t nc = 0, use, keep;
	void *txn;
	int rc = 0;

	memset(r, 0, sizeof(*r));
	r->prob = 0.5;
	tokset_init(&ts, texts);
	bayes_tokenize(m, tokset_emit, &ts);
	r->ntokens = (unsigned)ts.n;
	void *mine = mybatch(b);
	if ((txn = mine) == NULL && (txn = b->ops->begin(b->store, false)) == NULL) {
		seterr(b, "classify");
		tokset_free(&ts);
		return -1;
	}
	ids = tokset_sorted(&ts, &offs);
	cnt = xmalloc((ts.n ? ts.n : 1) * sizeof(*cnt));
	found = xmalloc(ts.n ? ts.n : 1);
	if (get_totals(b, txn, &r->nspam, &r->nham) < 0 ||
	    lookup(b, txn, txn == mine, ids, ts.n, cnt, found) < 0) {
		seterr(b, "classify");
		rc = -1;
	}
	if (txn != mine)
		b->ops->abort(b->store, txn);
	/*
	 * Only the max_tokens most extreme clues are combined: keep them in a
	 * sorted array of that size (insertion; most clues fall below the
	 * last one kept and cost one comparison) instead of sorting them all.
	 * With max_tokens 0 every clue is kept.
	 */
	keep = b->p.max_tokens ? b->p.max_tokens : ts.n;
	/* many kept (max_tokens 0 or large): collect them all, then qsort */
	bool sort_all = keep > 64;
	clues = xmalloc(((sort_all ? ts.n : keep) ? (sort_all ? ts.n : keep) : 1) * sizeof(*clues));
	for (size_t i = 0; rc == 0 && i < ts.n; i++) {
		struct clue c;
		size_t k;

		if (!found[i] || (cnt[i].spam == 0 && cnt[i].ham == 0))
			continue;
		c.f = bayes_token_prob(cnt[i].spam, cnt[i].ham, r->nspam, r->nham, b->p.s, b->p.x);
		c.dev = fabs(c.f - 0.5);
		if (c.dev < b->p.min_dev)
			continue;
		c.spam = cnt[i].spam;
		c.ham = cnt[i].ham;
		c.off = offs[i];
		if (sort_all) {
			clues[nc++] = c;        /* nc <= ts.n */
			continue;
		}
		if (nc == keep && !clue_before(&c, &clues[nc - 1]))
			continue;
		k = nc < keep ? nc++ : nc - 1;
		while (k > 0 && clue_before(&c, &clues[k - 1])) {
			clues[k] = clues[k - 1];
			k--;
		}
		clues[k] = c;
	}
	if (rc == 0 && sort_all) {
		qsort(clues, nc, sizeof(*clues), clue_cmp);
		if (nc > keep)
			nc = keep;
	}
	if (rc == 0) {
		use = nc;
		f = xcalloc(use ? use : 1, sizeof(*f));
		for (size_t i = 0; i < use; i++)
			f[i] = clues[i].f;
		r->prob = bayes_combine_ex(f, use, &r->lodds);
		free(f);
		r->nused = (unsigned)use;
		for (size_t i = 0; i < use && i < BAYES_TOP; i++) {
			struct bayes_token_info *ti = &r->top[r->ntop++];
			if (texts)
				moat_strlcpy(ti->text, ts.texts.data + clues[i].off - 1, sizeof(ti->text));
			ti->prob = clues[i].f;
			ti->spam = clues[i].spam;
			ti->ham = clues[i].ham;
		}
	}
	r->band = bayes_band_of(r->prob);
	r->symbol = band_names[r->band];
	r->score = b->p.band_score[r->band];
	r->ready = r->nspam >= b->p.min_learned && r->nham >= b->p.min_learned;
	free(clues);
	free(cnt);
	free(found);
	free(ids);
	free(offs);
	tokset_free(&ts);
	return rc;
}

int
bayes_classify(struct bayes *b, const struct mime_msg *m, struct bayes_result *r)
{
	return classify(b, m, r, false);
}

int
bayes_classify_explain(struct bayes *b, const struct mime_msg *m, struct bayes_result *r)
{
	return classify(b, m, r, true);
}

/* add (sign +1) or remove (-1) a message's tokens for one class */
static int
apply(struct bayes *b, void *txn, const struct tokset *ts, bool spam, int sign, uint32_t now)
{
	/* in key order: neighbouring B-tree pages one after another */
	uint64_t *ids = tokset_sorted(ts, NULL);
	int rc = 0;

	for (size_t i = 0; i < ts->n; i++) {
		struct bayes_counts c;
		int g;

		if ((g = b->ops->get(b->store, txn, ids[i], &c)) < 0) {
			rc = -1;
			break;
		}
		if (g == 1) {
			if (sign < 0)
				continue;
			memset(&c, 0, sizeof(c));
		}
		uint32_t *v = spam ? &c.spam : &c.ham;
		if (sign > 0) {
			if (*v < UINT32_MAX)
				(*v)++;
			c.atime = now;
		} else if (*v > 0)
			(*v)--;
		if (b->ops->put(b->store, txn, ids[i], &c) < 0) {
			rc = -1;
			break;
		}
	}
	free(ids);
	return rc;
}

static int
bump_total(struct bayes *b, void *txn, bool spam, int sign)
{
	const char *k = spam ? "nspam" : "nham";
	uint64_t v = 0;

	if (b->ops->meta_get(b->store, txn, k, &v) < 0)
		return -1;
	if (sign > 0)
		v++;
	else if (v > 0)
		v--;
	return b->ops->meta_put(b->store, txn, k, v);
}

static void *
wtxn(struct bayes *b)
{
	void *t = mybatch(b);
	if (t)
		return t;
	return b->ops->begin(b->store, true);
}

static int
wdone(struct bayes *b, void *txn, int rc)
{
	if (txn == mybatch(b))
		return rc;
	if (rc < 0) {
		b->ops->abort(b->store, txn);
		return rc;
	}
	if (b->ops->commit(b->store, txn) < 0) {
		seterr(b, "commit");
		return -1;
	}
	return rc;
}

int
bayes_learn(struct bayes *b, const struct mime_msg *m, bool spam,
    const uint8_t digest[BAYES_DIGEST_LEN])
{
	struct tokset ts;
	void *txn;
	int seen_spam, g, rc = BAYES_OK;
	uint32_t when, now = (uint32_t)time(NULL);
	uint64_t tv = 0;

	if ((txn = wtxn(b)) == NULL) {
		seterr(b, "learn");
		return -1;
	}
	g = b->ops->seen_get(b->store, txn, digest, &seen_spam, &when);
	if (g == 0 && (bool)seen_spam == spam)
		return wdone(b, txn, BAYES_ALREADY);
	if (g < 0 || b->ops->meta_get(b->store, txn, "tokenizer", &tv) < 0)
		goto fail;
	if (tv == 0 && b->ops->meta_put(b->store, txn, "tokenizer", BAYES_TOKENIZER_VERSION) < 0)
		goto fail;
	tokset_init(&ts, false);
	bayes_tokenize(m, tokset_emit, &ts);
	if (g == 0) {                           /* learned as the other class */
		if (apply(b, txn, &ts, !spam, -1, now) < 0 || bump_total(b, txn, !spam, -1) < 0) {
			tokset_free(&ts);
			goto fail;
		}
	}
	if (apply(b, txn, &ts, spam, +1, now) < 0 || bump_total(b, txn, spam, +1) < 0 ||
	    b->ops->seen_put(b->store, txn, digest, spam, now) < 0) {
		tokset_free(&ts);
		goto fail;
	}
	tokset_free(&ts);
	return wdone(b, txn, rc);
fail:
	seterr(b, "learn");
	if (txn == mybatch(b)) {
		/* a failed write poisons an LMDB txn: the batch is lost */
		b->ops->abort(b->store, txn);
		setbatch(b, NULL);
		return -1;
	}
	return wdone(b, txn, -1);
}

int
bayes_forget(struct bayes *b, const struct mime_msg *m, int want_spam,
    const uint8_t digest[BAYES_DIGEST_LEN])
{
	struct tokset ts;
	void *txn;
	int seen_spam, g;
	uint32_t when;

	if ((txn = wtxn(b)) == NULL) {
		seterr(b, "forget");
		return -1;
	}
	g = b->ops->seen_get(b->store, txn, digest, &seen_spam, &when);
	if (g < 0)
		goto fail;
	if (g == 1 || (want_spam >= 0 && (bool)want_spam != (bool)seen_spam))
		return wdone(b, txn, BAYES_NOT_LEARNED);
	tokset_init(&ts, false);
	bayes_tokenize(m, tokset_emit, &ts);
	if (apply(b, txn, &ts, seen_spam, -1, 0) < 0 || bump_total(b, txn, seen_spam, -1) < 0 ||
	    b->ops->seen_del(b->store, txn, digest) < 0) {
		tokset_free(&ts);
		goto fail;
	}
	tokset_free(&ts);
	return wdone(b, txn, BAYES_OK);
fail:
	seterr(b, "forget");
	if (txn == mybatch(b)) {
		b->ops->abort(b->store, txn);
		setbatch(b, NULL);
		return -1;
	}
	return wdone(b, txn, -1);
}

int
bayes_batch_begin(struct bayes *b)
{
	void *t;
	if (mybatch(b))
		return 0;
	/* blocks while another thread's write txn is open (LMDB's writer lock) */
	if ((t = b->ops->begin(b->store, true)) == NULL) {
		seterr(b, "begin");
		return -1;
	}
	setbatch(b, t);
	return 0;
}

int
bayes_batch_end(struct bayes *b, bool commit)
{
	void *txn = mybatch(b);

	if (txn == NULL)
		return commit ? -1 : 0;
	setbatch(b, NULL);
	if (!commit) {
		b->ops->abort(b->store, txn);
		return 0;
	}
	if (b->ops->commit(b->store, txn) < 0) {
		seterr(b, "commit");
		return -1;
	}
	return 0;
}

struct oldest_ctx {
	uint32_t oldest;
};

static int
oldest_cb(void *arg, uint64_t id, const struct bayes_counts *c)
{
	struct oldest_ctx *o = arg;
	(void)id;
	if (o->oldest == 0 || (c->atime && c->atime < o->oldest))
		o->oldest = c->atime;
	return 0;
}

int
bayes_stats(struct bayes *b, struct bayes_stats *st)
{
	struct oldest_ctx o = { 0 };
	void *txn;
	int rc = 0;

	memset(st, 0, sizeof(*st));
	if ((txn = b->ops->begin(b->store, false)) == NULL) {
		seterr(b, "stats");
		return -1;
	}
	if (get_totals(b, txn, &st->nspam, &st->nham) < 0 ||
	    b->ops->meta_get(b->store, txn, "tokenizer", &st->tokenizer) < 0 ||
	    b->ops->count(b->store, txn, &st->ntokens, &st->nseen) < 0 ||
	    b->ops->tokens(b->store, txn, oldest_cb, &o) < 0) {
		seterr(b, "stats");
		rc = -1;
	}
	st->oldest = o.oldest;
	b->ops->abort(b->store, txn);
	return rc;
}

struct expire_ctx {
	uint32_t before;
	unsigned max;
	long     n;
};

static int
expire_cb(void *arg, uint64_t id, const struct bayes_counts *c)
{
	struct expire_ctx *e = arg;
	(void)id;
	if ((uint64_t)c->spam + c->ham <= e->max && c->atime < e->before) {
		e->n++;
		return 1;
	}
	return 0;
}

long
bayes_expire(struct bayes *b, time_t before, unsigned max_count)
{
	struct expire_ctx e = { (uint32_t)before, max_count, 0 };
	void *txn;

	if ((txn = b->ops->begin(b->store, true)) == NULL) {
		seterr(b, "expire");
		return -1;
	}
	if (b->ops->tokens(b->store, txn, expire_cb, &e) < 0) {
		seterr(b, "expire");
		b->ops->abort(b->store, txn);
		return -1;
	}
	if (b->ops->commit(b->store, txn) < 0) {
		seterr(b, "expire");
		return -1;
	}
	return e.n;
}

static int
export_tok(void *arg, uint64_t id, const struct bayes_counts *c)
{
	return fprintf(arg, "t %016" PRIx64 " %" PRIu32 " %" PRIu32 " %" PRIu32 "\n",
	    id, c->spam, c->ham, c->atime) < 0 ? -1 : 0;
}

static int
export_seen(void *arg, const uint8_t *d, int spam, uint32_t when)
{
	FILE *f = arg;
	fputs("d ", f);
	for (int i = 0; i < BAYES_DIGEST_LEN; i++)
		fprintf(f, "%02x", d[i]);
	return fprintf(f, " %c %" PRIu32 "\n", spam ? 's' : 'h', when) < 0 ? -1 : 0;
}

int
bayes_export(struct bayes *b, FILE *f)
{
	uint64_t ns, nh, tv = 0;
	void *txn;
	int rc = 0;

	if ((txn = b->ops->begin(b->store, false)) == NULL) {
		seterr(b, "export");
		return -1;
	}
	if (get_totals(b, txn, &ns, &nh) < 0 || b->ops->meta_get(b->store, txn, "tokenizer", &tv) < 0)
		rc = -1;
	else {
		fprintf(f, "moat-bayes 1 tokenizer %" PRIu64 "\n", tv ? tv : BAYES_TOKENIZER_VERSION);
		fprintf(f, "m %" PRIu64 " %" PRIu64 "\n", ns, nh);
		if (b->ops->tokens(b->store, txn, export_tok, f) < 0 ||
		    b->ops->seen_walk(b->store, txn, export_seen, f) < 0)
			rc = -1;
	}
	if (rc < 0)
		seterr(b, "export");
	b->ops->abort(b->store, txn);
	if (fflush(f) != 0) {
		snprintf(b->err, sizeof(b->err), "export: %s", strerror(errno));
		rc = -1;
	}
	return rc;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

int
bayes_import(struct bayes *b, FILE *f, char **err)
{
	char line[256];
	unsigned long lineno = 0;
	void *txn;
	const char *why = NULL;

	*err = NULL;
	if ((txn = b->ops->begin(b->store, true)) == NULL) {
		seterr(b, "import");
		*err = xstrdup(b->err);
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		size_t ll = strlen(line);
		lineno++;
		if (ll && line[ll - 1] != '\n' && !feof(f)) {
			why = "line too long";
			goto bad;
		}
		if (lineno == 1) {
			if (strncmp(line, "moat-bayes 1", 12) != 0) {
				why = "not a moat-bayes 1 dump";
				goto bad;
			}
			continue;
		}
		if (line[0] == 'm') {
			uint64_t ns, nh, os, oh;
			if (sscanf(line, "m %" SCNu64 " %" SCNu64, &ns, &nh) != 2) {
				why = "bad m line";
				goto bad;
			}
			if (get_totals(b, txn, &os, &oh) < 0 ||
			    b->ops->meta_put(b->store, txn, "nspam", os + ns) < 0 ||
			    b->ops->meta_put(b->store, txn, "nham", oh + nh) < 0 ||
			    b->ops->meta_put(b->store, txn, "tokenizer", BAYES_TOKENIZER_VERSION) < 0)
				goto fail;
		} else if (line[0] == 't') {
			uint64_t id;
			struct bayes_counts c, o;
			int g;
			if (sscanf(line, "t %" SCNx64 " %" SCNu32 " %" SCNu32 " %" SCNu32,
			    &id, &c.spam, &c.ham, &c.atime) != 4) {
				why = "bad t line";
				goto bad;
			}
			if ((g = b->ops->get(b->store, txn, id, &o)) < 0)
				goto fail;
			if (g == 0) {
				c.spam = o.spam + c.spam < o.spam ? UINT32_MAX : o.spam + c.spam;
				c.ham = o.ham + c.ham < o.ham ? UINT32_MAX : o.ham + c.ham;
				if (o.atime > c.atime)
					c.atime = o.atime;
			}
			if (b->ops->put(b->store, txn, id, &c) < 0)
				goto fail;
		} else if (line[0] == 'd') {
			uint8_t d[BAYES_DIGEST_LEN];
			char cls;
			uint32_t when;
			if (ll < 2 + 2 * BAYES_DIGEST_LEN + 4 ||
			    sscanf(line + 2 + 2 * BAYES_DIGEST_LEN, " %c %" SCNu32, &cls, &when) != 2 ||
			    (cls != 's' && cls != 'h')) {
				why = "bad d line";
				goto bad;
			}
			for (int i = 0; i < BAYES_DIGEST_LEN; i++) {
				int hi = hexval(line[2 + 2 * i]), lo = hexval(line[3 + 2 * i]);
				if (hi < 0 || lo < 0) {
					why = "bad digest";
					goto bad;
				}
				d[i] = (uint8_t)(hi << 4 | lo);
			}
			if (b->ops->seen_put(b->store, txn, d, cls == 's', when) < 0)
				goto fail;
		} else if (line[0] != '\n' && line[0] != '#') {
			why = "unknown line";
			goto bad;
		}
	}
	if (lineno == 0) {
		why = "empty input";
		goto bad;
	}
	if (b->ops->commit(b->store, txn) < 0) {
		seterr(b, "import");
		*err = xstrdup(b->err);
		return -1;
	}
	return 0;
bad:
	b->ops->abort(b->store, txn);
	*err = xmalloc(128);
	snprintf(*err, 128, "line %lu: %s", lineno, why);
	return -1;
fail:
	seterr(b, "import");
	b->ops->abort(b->store, txn);
	*err = xstrdup(b->err);
	return -1;
}
