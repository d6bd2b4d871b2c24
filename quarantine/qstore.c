/*
 * qstore.c - the quarantine store: message files in quarantine/msg/ (the
 * spool's queue-file format, so the original envelope is kept) and an
 * SQLite index (quarantine/index.db, WAL).  Layout, ordering and the crash
 * rules are in qstore.h.
 *
 * Runs in: worker pool threads (the filter engine's quarantine action) and
 * the moat CLI.  BLOCKING.  Untrusted input: the stored messages (header
 * fields From/Subject are read from at most QS_HDR_MAX bytes, decoded with
 * bounds, control characters replaced) and the envelope values (written by
 * our SMTP parser, re-read by spool_read_envelope_fd with its bounds).
 * Every SQL statement is prepared with bound parameters.
 */
#include "config.h"
#include "qstore.h"
#include "buf.h"
#include "log.h"
#include "spool.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QS_HDR_MAX      (256 * 1024)    /* header bytes scanned for From/Subject */
#define QS_FIELD_MAX    4096            /* raw bytes of one unfolded field kept */

struct qstore {
	sqlite3 *db;
	char     statedir[PATH_MAX];
	char     msgdir[PATH_MAX];
	char     tmpdir[PATH_MAX];
	struct qstore_conf conf;
	char     err[512];
};

static const char *state_names[] = { "held", "releasing", "released", "deleted", "lost" };

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS msg ("
    " id TEXT PRIMARY KEY, time INTEGER NOT NULL, client TEXT, sender TEXT NOT NULL,"
    " hfrom TEXT, subject TEXT, size INTEGER NOT NULL DEFAULT 0, score REAL,"
    " action TEXT, symbols TEXT, state TEXT NOT NULL DEFAULT 'held',"
    " state_time INTEGER, state_by TEXT, release_qid TEXT);"
    "CREATE INDEX IF NOT EXISTS msg_time ON msg(time);"
    "CREATE INDEX IF NOT EXISTS msg_state ON msg(state);"
    "CREATE TABLE IF NOT EXISTS rcpt ("
    " id TEXT NOT NULL, addr TEXT NOT NULL, laddr TEXT NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'held', release_qid TEXT, PRIMARY KEY (id, laddr));"
    "CREATE INDEX IF NOT EXISTS rcpt_laddr ON rcpt(laddr);"
    "CREATE INDEX IF NOT EXISTS rcpt_state ON rcpt(state);";

const char *
qstore_state_name(enum qstore_state s)
{
	return (unsigned)s < ARRAY_SIZE(state_names) ? state_names[s] : "?";
}

static enum qstore_state
state_of(const char *s)
{
	for (size_t i = 0; s && i < ARRAY_SIZE(state_names); i++)
		if (strcmp(s, state_names[i]) == 0)
			return (enum qstore_state)i;
	return QS_LOST;
}

void
qstore_conf_default(struct qstore_conf *c)
{
	c->retention = QSTORE_RETENTION_DEFAULT;
	c->max_size = QSTORE_MAX_SIZE_DEFAULT;
}

const char *
qstore_error(const struct qstore *qs)
{
	return qs->err;
}

void
qstore_set_conf(struct qstore *qs, const struct qstore_conf *c)
{
	qs->conf = *c;
}

static int
seterr(struct qstore *qs, const char *what, const char *detail)
{
	snprintf(qs->err, sizeof(qs->err), "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
	return -1;
}

static int
dberr(struct qstore *qs, const char *what)
{
	return seterr(qs, what, sqlite3_errmsg(qs->db));
}

static int
exec(struct qstore *qs, const char *sql)
{
	char *emsg = NULL;

	if (sqlite3_exec(qs->db, sql, NULL, NULL, &emsg) != SQLITE_OK) {
		seterr(qs, sql, emsg);
		sqlite3_free(emsg);
		return -1;
	}
	return 0;
}

static sqlite3_stmt *
prep(struct qstore *qs, const char *sql)
{
	sqlite3_stmt *st = NULL;

	if (sqlite3_prepare_v2(qs->db, sql, -1, &st, NULL) != SQLITE_OK) {
		dberr(qs, "prepare");
		return NULL;
	}
	return st;
}

static void
bind_text(sqlite3_stmt *st, int i, const char *s)
{
	if (s)
		sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
	else
		sqlite3_bind_null(st, i);
}

/* one statement with text parameters (NULL-terminated list), no rows */
static int
run(struct qstore *qs, const char *sql, const char *p1, const char *p2, const char *p3,
    const char *p4)
{
	sqlite3_stmt *st = prep(qs, sql);
	const char *p[4] = { p1, p2, p3, p4 };
	int n, rc;

	if (st == NULL)
		return -1;
	n = sqlite3_bind_parameter_count(st);
	for (int i = 0; i < n && i < 4; i++)
		bind_text(st, i + 1, p[i]);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return dberr(qs, "update");
	return sqlite3_changes(qs->db);
}

static void
lower_copy(const char *s, char *out, size_t outsz)
{
	moat_strlcpy(out, s, outsz);
	ascii_lower(out);
}

/* ------------------------------------------------------------------ */
/* RFC 2047                                                           */
/* ------------------------------------------------------------------ */

static int
b64val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z') return c - 'A';
	if (c >= 'a' && c <= 'z') return c - 'a' + 26;
	if (c >= '0' && c <= '9') return c - '0' + 52;
	if (c == '+') return 62;
	if (c == '/') return 63;
	return -1;
}

static int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	return -1;
}

struct outb {
	char  *p;
	size_t n, sz;
};

static void
out_c(struct outb *o, unsigned char c)
{
	/* control characters never reach a terminal or the index */
	if (c < 0x20 || c == 0x7f)
		c = (c == '\t') ? ' ' : '?';
	if (o->n + 1 < o->sz)
		o->p[o->n++] = (char)c;
}

static void
out_latin1(struct outb *o, unsigned char c)
{
	if (c < 0x80) {
		out_c(o, c);
	} else if (o->n + 2 < o->sz) {
		o->p[o->n++] = (char)(0xc0 | (c >> 6));
		o->p[o->n++] = (char)(0x80 | (c & 0x3f));
	}
}

/* length of a valid UTF-8 sequence at p (n bytes available), 0 if none */
static size_t
utf8_len(const unsigned char *p, size_t n)
{
	size_t l;
	unsigned cp;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) { l = 2; cp = p[0] & 0x1f; }
	else if (p[0] >= 0xe0 && p[0] <= 0xef) { l = 3; cp = p[0] & 0x0f; }
	else if (p[0] >= 0xf0 && p[0] <= 0xf4) { l = 4; cp = p[0] & 0x07; }
	else return 0;
	if (l > n)
		return 0;
	for (size_t i = 1; i < l; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((l == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (l == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return l;
}

/* bytes that should be UTF-8: valid sequences copied, any other byte taken
 * as Latin-1, so the index (and JSON output) only ever holds UTF-8 */
static void
out_utf8(struct outb *o, const char *s, size_t n)
{
	for (size_t i = 0; i < n; ) {
		size_t l = utf8_len((const unsigned char *)s + i, n - i);
		if (l == 0) {
			out_latin1(o, (unsigned char)s[i]);
			i++;
		} else if (l == 1) {
			out_c(o, (unsigned char)s[i]);
			i++;
		} else {
			if (o->n + l < o->sz) {
				memcpy(o->p + o->n, s + i, l);
				o->n += l;
			}
			i += l;
		}
	}
}

/* decode one encoded word's text into o; false if not decodable */
static bool
decode_word(const char *cs, size_t cslen, char enc, const char *t, size_t tlen, struct outb *o)
{
	bool latin1, utf8;
	char tmp[QS_FIELD_MAX];
	size_t n = 0;

	latin1 = (cslen == 10 && ascii_prefix_ci(cs, cslen, "iso-8859-1")) ||
	    (cslen == 6 && ascii_prefix_ci(cs, cslen, "latin1"));
	utf8 = (cslen == 5 && ascii_prefix_ci(cs, cslen, "utf-8")) ||
	    (cslen == 4 && ascii_prefix_ci(cs, cslen, "utf8")) ||
	    (cslen == 8 && ascii_prefix_ci(cs, cslen, "us-ascii"));
	if (!latin1 && !utf8)
		return false;
	if (enc == 'B' || enc == 'b') {
		unsigned acc = 0;
		int bits = 0;
		for (size_t i = 0; i < tlen; i++) {
			int v = b64val((unsigned char)t[i]);
			if (t[i] == '=')
				break;
			if (v < 0)
				return false;
			acc = (acc << 6) | (unsigned)v;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				if (n < sizeof(tmp))
					tmp[n++] = (char)((acc >> bits) & 0xff);
			}
		}
	} else if (enc == 'Q' || enc == 'q') {
		for (size_t i = 0; i < tlen; i++) {
			char c = t[i];
			if (c == '_')
				c = ' ';
			else if (c == '=' && i + 2 < tlen && hexval((unsigned char)t[i + 1]) >= 0 &&
			    hexval((unsigned char)t[i + 2]) >= 0) {
				c = (char)(hexval((unsigned char)t[i + 1]) * 16 + hexval((unsigned char)t[i + 2]));
				i += 2;
			}
			if (n < sizeof(tmp))
				tmp[n++] = c;
		}
	} else {
		return false;
	}
	if (latin1) {
		for (size_t i = 0; i < n; i++)
			out_latin1(o, (unsigned char)tmp[i]);
	} else {
		out_utf8(o, tmp, n);
	}
	return true;
}

size_t
qstore_decode_2047(const char *in, size_t len, char *out, size_t outsz)
{
	struct outb o = { out, 0, outsz };
	size_t i = 0, pending_ws = 0, ws_at = 0;
	bool last_encoded = false;

	if (outsz == 0)
		return 0;
	while (i < len) {
		if (in[i] == '=' && i + 1 < len && in[i + 1] == '?') {
			/* =?charset?E?text?= */
			const char *cs = in + i + 2, *q1, *q2, *end;
			size_t rest = len - i - 2;
			q1 = memchr(cs, '?', rest);
			if (q1 && (size_t)(q1 - in) + 3 < len && q1[2] == '?') {
				const char *t = q1 + 3;
				end = NULL;
				for (q2 = t; (size_t)(q2 - in) + 1 < len; q2++)
					if (q2[0] == '?' && q2[1] == '=') {
						end = q2;
						break;
					}
				if (end) {
					size_t save = o.n;
					const char *star = memchr(cs, '*', (size_t)(q1 - cs));  /* RFC 2231 language */
					size_t cslen = star ? (size_t)(star - cs) : (size_t)(q1 - cs);
					/* whitespace between two encoded words is dropped */
					if (last_encoded && pending_ws)
						o.n = ws_at;
					if (decode_word(cs, cslen, q1[1], t, (size_t)(end - t), &o)) {
						i = (size_t)(end - in) + 2;
						last_encoded = true;
						pending_ws = 0;
						continue;
					}
					o.n = save;
				}
			}
		}
		if (in[i] == '\r' || in[i] == '\n') {
			i++;
			continue;
		}
		if (in[i] == ' ' || in[i] == '\t') {
			if (pending_ws == 0)
				ws_at = o.n;
			pending_ws++;
			out_c(&o, ' ');
			i++;
			continue;
		}
		last_encoded = false;
		pending_ws = 0;
		{
			size_t l = utf8_len((const unsigned char *)in + i, len - i);
			out_utf8(&o, in + i, l ? l : 1);
			i += l ? l : 1;
		}
	}
	/* characters are written whole or not at all: no partial UTF-8 */
	out[o.n] = '\0';
	return o.n;
}

/* find header `name` in the header block h[0..len) (stops at the empty
 * line); decoded into out */
static bool
header_get(const char *h, size_t len, const char *name, char *out, size_t outsz)
{
	size_t nl = strlen(name), i = 0;

	out[0] = '\0';
	while (i < len) {
		size_t eol = i;
		while (eol < len && h[eol] != '\n')
			eol++;
		size_t ll = eol - i;
		if (ll > 0 && h[i + ll - 1] == '\r')
			ll--;
		if (ll == 0)
			return false;           /* end of the header */
		if (ll > nl && h[i + nl] == ':' && ascii_prefix_ci(h + i, ll, name)) {
			char raw[QS_FIELD_MAX];
			size_t rn = 0, j = i + nl + 1;
			/* unfold: the field runs until a line not starting with WSP */
			for (;;) {
				size_t e = j;
				while (e < len && h[e] != '\n')
					e++;
				for (size_t k = j; k < e && rn + 1 < sizeof(raw); k++)
					if (h[k] != '\r')
						raw[rn++] = h[k];
				j = e + 1;
				if (j >= len || (h[j] != ' ' && h[j] != '\t'))
					break;
			}
			size_t s = 0;
			while (s < rn && (raw[s] == ' ' || raw[s] == '\t'))
				s++;
			while (rn > s && (raw[rn - 1] == ' ' || raw[rn - 1] == '\t'))
				rn--;
			qstore_decode_2047(raw + s, rn - s, out, outsz);
			return true;
		}
		i = eol + 1;
	}
	return false;
}

/* ------------------------------------------------------------------ */
/* open, close                                                        */
/* ------------------------------------------------------------------ */

static long recover_releases(struct qstore *);

struct qstore *
qstore_open(const char *statedir, char **err)
{
	struct qstore *qs = xcalloc(1, sizeof(*qs));
	char path[PATH_MAX];

	qstore_conf_default(&qs->conf);
	if ((size_t)snprintf(qs->statedir, sizeof(qs->statedir), "%s", statedir) >= sizeof(qs->statedir) ||
	    (size_t)snprintf(qs->msgdir, sizeof(qs->msgdir), "%s/quarantine/msg", statedir) >= sizeof(qs->msgdir) ||
	    (size_t)snprintf(qs->tmpdir, sizeof(qs->tmpdir), "%s/quarantine/tmp", statedir) >= sizeof(qs->tmpdir)) {
		*err = xstrdup("quarantine: state-dir path too long");
		free(qs);
		return NULL;
	}
	if (mkdir_p(qs->msgdir, 0700) < 0 || mkdir_p(qs->tmpdir, 0700) < 0) {
		snprintf(path, sizeof(path), "quarantine: cannot create %s: %s", qs->msgdir, strerror(errno));
		*err = xstrdup(path);
		free(qs);
		return NULL;
	}
	snprintf(path, sizeof(path), "%s/quarantine/index.db", statedir);
	if (sqlite3_open_v2(path, &qs->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
	    SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
		char msg[PATH_MAX + 128];
		snprintf(msg, sizeof(msg), "quarantine: %s: %s", path,
		    qs->db ? sqlite3_errmsg(qs->db) : "cannot open");
		*err = xstrdup(msg);
		sqlite3_close(qs->db);
		free(qs);
		return NULL;
	}
	sqlite3_busy_timeout(qs->db, 10000);
	/* synchronous=FULL: a release marked done stays done across power loss */
	if (exec(qs, "PRAGMA journal_mode=WAL") < 0 || exec(qs, "PRAGMA synchronous=FULL") < 0 ||
	    exec(qs, schema) < 0) {
		char msg[700];
		snprintf(msg, sizeof(msg), "quarantine: %s: %s", path, qs->err);
		*err = xstrdup(msg);
		sqlite3_close(qs->db);
		free(qs);
		return NULL;
	}
	/* cheap repairs every time: leftovers of qstore_put_buf, and releases
	 * a crash interrupted (they must not stay half done) */
	DIR *d = opendir(qs->tmpdir);
	if (d) {
		struct dirent *de;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", qs->tmpdir, de->d_name);
			(void)unlink(path);
		}
		closedir(d);
	}
	(void)recover_releases(qs);
	return qs;
}

void
qstore_close(struct qstore **pqs)
{
	struct qstore *qs = *pqs;

	if (qs == NULL)
		return;
	sqlite3_close(qs->db);
	free(qs);
	*pqs = NULL;
}

/* ------------------------------------------------------------------ */
/* putting messages in                                                */
/* ------------------------------------------------------------------ */

/* the header block of an open stored file, at most QS_HDR_MAX bytes */
static size_t
read_headers(int fd, const struct envelope *e, char *buf, size_t bufsz)
{
	size_t want = (size_t)e->data_len < bufsz ? (size_t)e->data_len : bufsz;
	size_t got = 0;

	while (got < want) {
		ssize_t n = pread(fd, buf + got, want - got, e->data_off + (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

static int
index_insert(struct qstore *qs, const struct envelope *e, long long size, const char *hfrom,
    const char *subject, const struct qstore_verdict *v, bool have_verdict)
{
	sqlite3_stmt *st;
	char l[1024];
	int rc;

	if (exec(qs, "BEGIN IMMEDIATE") < 0)
		return -1;
	st = prep(qs, "INSERT OR REPLACE INTO msg (id, time, client, sender, hfrom, subject, size,"
	    " score, action, symbols, state) VALUES (?,?,?,?,?,?,?,?,?,?,'held')");
	if (st == NULL)
		goto fail;
	bind_text(st, 1, e->qid);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)e->arrival);
	bind_text(st, 3, e->client_addr);
	bind_text(st, 4, e->sender ? e->sender : "");
	bind_text(st, 5, hfrom);
	bind_text(st, 6, subject);
	sqlite3_bind_int64(st, 7, size);
	if (have_verdict)
		sqlite3_bind_double(st, 8, v->score);
	else
		sqlite3_bind_null(st, 8);
	bind_text(st, 9, have_verdict && v->action ? v->action : "quarantine");
	bind_text(st, 10, have_verdict ? v->symbols : NULL);
	rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE) {
		dberr(qs, "insert");
		goto fail;
	}
	if (run(qs, "DELETE FROM rcpt WHERE id = ?", e->qid, NULL, NULL, NULL) < 0)
		goto fail;
	st = prep(qs, "INSERT OR IGNORE INTO rcpt (id, addr, laddr) VALUES (?,?,?)");
	if (st == NULL)
		goto fail;
	for (size_t i = 0; i < e->nrcpts; i++) {
		lower_copy(e->rcpts[i].addr, l, sizeof(l));
		sqlite3_reset(st);
		bind_text(st, 1, e->qid);
		bind_text(st, 2, e->rcpts[i].addr);
		bind_text(st, 3, l);
		if (sqlite3_step(st) != SQLITE_DONE) {
			dberr(qs, "insert rcpt");
			sqlite3_finalize(st);
			goto fail;
		}
	}
	sqlite3_finalize(st);
	if (exec(qs, "COMMIT") < 0)
		goto fail;
	return 0;
fail:
	{
		char keep[sizeof(qs->err)];
		memcpy(keep, qs->err, sizeof(keep));
		(void)exec(qs, "ROLLBACK");
		memcpy(qs->err, keep, sizeof(keep));
	}
	return -1;
}

/* index the stored file msg/<qid> (open as fd) */
static int
index_file(struct qstore *qs, int fd, struct envelope *e, const struct qstore_verdict *v,
    bool have_verdict)
{
	char *h = xmalloc(QS_HDR_MAX);
	char from[QSTORE_TEXT_MAX + 1], subj[QSTORE_TEXT_MAX + 1];
	size_t hl = read_headers(fd, e, h, QS_HDR_MAX);
	int r;

	header_get(h, hl, "From", from, sizeof(from));
	header_get(h, hl, "Subject", subj, sizeof(subj));
	free(h);
	r = index_insert(qs, e, (long long)e->data_len, from, subj, v, have_verdict);
	return r;
}

static void
log_put(const struct envelope *e, const struct qstore_verdict *v)
{
	log_notice("qid=%s event=quarantined from=<%s> nrcpt=%zu size=%lld score=%.2f symbols=\"%s\"",
	    e->qid, esc(e->sender ? e->sender : ""), e->nrcpts, (long long)e->data_len,
	    v ? v->score : 0.0, esc(v && v->symbols ? v->symbols : ""));
}

int
qstore_put_from_spool(struct qstore *qs, const char *qid, const struct qstore_verdict *v)
{
	char src[PATH_MAX], dst[PATH_MAX], stp[PATH_MAX];
	struct envelope e;
	char *err = NULL;
	int fd;

	if (!spool_valid_qid(qid))
		return seterr(qs, "not a queue id", NULL);
	snprintf(src, sizeof(src), "%s/spool/queue/%s", qs->statedir, qid);
	snprintf(dst, sizeof(dst), "%s/%s", qs->msgdir, qid);
	if ((fd = open(src, O_RDONLY | O_CLOEXEC)) < 0)
		return seterr(qs, src, strerror(errno));
	if (spool_read_envelope_fd(fd, &e, &err) < 0) {
		seterr(qs, src, err);
		free(err);
		close(fd);
		return -1;
	}
	/* one rename moves it out of the queue and into the quarantine; one
	 * fsync of quarantine/msg makes both directory changes durable (they
	 * are one journal transaction) */
	if (rename(src, dst) < 0) {
		seterr(qs, "rename into quarantine", strerror(errno));
		goto fail;
	}
	if (fsync_dir(qs->msgdir) < 0) {
		seterr(qs, "fsync quarantine", strerror(errno));
		(void)rename(dst, src);
		goto fail;
	}
	snprintf(stp, sizeof(stp), "%s/spool/state/%s", qs->statedir, qid);
	(void)unlink(stp);
	/* the message is safe now; a failed index insert is repaired by
	 * qstore_check (file without row), so it is not an error for the
	 * caller, who may answer 250 */
	if (index_file(qs, fd, &e, v, v != NULL) < 0)
		log_warnx("qid=%s event=quarantine-index-failed error=\"%s\"", qid, esc(qs->err));
	log_put(&e, v);
	envelope_clear(&e);
	close(fd);
	return 0;
fail:
	envelope_clear(&e);
	close(fd);
	return -1;
}

/*
 * A message from memory.  spool_begin/spool_write produce the envelope and
 * the message in spool/incoming/ (one writer of the format); we add the
 * end marker ourselves, check that spool_read_envelope_fd accepts the file,
 * and rename it from incoming/ straight into quarantine/msg/.  It never
 * passes through spool/queue/, so no crash can leave it to be delivered;
 * a crash before the rename leaves an incoming/ file, which moatd removes
 * at start (never acknowledged).
 */
int
qstore_put_buf(struct qstore *qs, struct envelope *env, const char *msg, size_t len,
    const struct qstore_verdict *v)
{
	struct spool_writer *w;
	struct envelope e;
	char dst[PATH_MAX], src[PATH_MAX], trailer[64], *err = NULL;
	int fd = -1, r = -1;
	int tl;

	if (env->qid[0] == '\0')
		spool_new_qid(env->qid);
	if (!spool_valid_qid(env->qid))
		return seterr(qs, "not a queue id", env->qid);
	if (env->arrival == 0)
		env->arrival = time(NULL);
	snprintf(dst, sizeof(dst), "%s/%s", qs->msgdir, env->qid);
	if (access(dst, F_OK) == 0)
		return seterr(qs, "already in quarantine", env->qid);
	if ((w = spool_begin(env, NULL, &err)) == NULL) {
		seterr(qs, "quarantine", err);
		free(err);
		return -1;
	}
	moat_strlcpy(src, spool_writer_path(w), sizeof(src));
	spool_write(w, msg, len);
	if (spool_flush(w) < 0) {
		seterr(qs, src, "write failed");
		goto out;
	}
	/* the end marker, as spool_commit writes it (no added headers) */
	tl = snprintf(trailer, sizeof(trailer), "\nMOAT-END %s %08zx\n", env->qid, (size_t)0);
	if ((fd = open(src, O_RDWR | O_APPEND | O_CLOEXEC)) < 0 ||
	    write_full(fd, trailer, (size_t)tl) < 0 || fsync(fd) < 0) {
		seterr(qs, src, strerror(errno));
		goto out;
	}
	if (spool_read_envelope_fd(fd, &e, &err) < 0) {
		seterr(qs, "quarantine: the spool format changed under qstore_put_buf", err);
		free(err);
		goto out;
	}
	if (rename(src, dst) < 0 || fsync_dir(qs->msgdir) < 0) {
		seterr(qs, dst, strerror(errno));
		envelope_clear(&e);
		goto out;
	}
	if (index_file(qs, fd, &e, v, v != NULL) < 0)
		log_warnx("qid=%s event=quarantine-index-failed error=\"%s\"", e.qid, esc(qs->err));
	log_put(&e, v);
	envelope_clear(&e);
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	spool_abort(w);         /* unlinks incoming/QID unless it moved */
	spool_writer_free(w);
	return r;
}

/* ------------------------------------------------------------------ */
/* reading the index                                                  */
/* ------------------------------------------------------------------ */

void
qstore_entry_clear(struct qstore_entry *en)
{
	free(en->client);
	free(en->sender);
	for (size_t i = 0; i < en->nrcpts; i++) {
		free(en->rcpts[i]);
		free(en->rcpt_states[i]);
	}
	free(en->rcpts);
	free(en->rcpt_states);
	free(en->hfrom);
	free(en->subject);
	free(en->action);
	free(en->symbols);
	free(en->state_by);
	memset(en, 0, sizeof(*en));
}

#define ENTRY_COLS "id, time, client, sender, hfrom, subject, size, score, action, symbols," \
	" state, state_time, state_by"

static char *
col_dup(sqlite3_stmt *st, int i)
{
	const unsigned char *s = sqlite3_column_text(st, i);
	return s ? xstrdup((const char *)s) : NULL;
}

static int
entry_from_row(struct qstore *qs, sqlite3_stmt *st, sqlite3_stmt *rst, struct qstore_entry *en)
{
	const unsigned char *id = sqlite3_column_text(st, 0);

	memset(en, 0, sizeof(*en));
	moat_strlcpy(en->id, id ? (const char *)id : "", sizeof(en->id));
	en->time = (time_t)sqlite3_column_int64(st, 1);
	en->client = col_dup(st, 2);
	en->sender = col_dup(st, 3);
	en->hfrom = col_dup(st, 4);
	en->subject = col_dup(st, 5);
	en->size = sqlite3_column_int64(st, 6);
	en->score = sqlite3_column_double(st, 7);
	en->action = col_dup(st, 8);
	en->symbols = col_dup(st, 9);
	en->state = state_of((const char *)sqlite3_column_text(st, 10));
	en->state_time = (time_t)sqlite3_column_int64(st, 11);
	en->state_by = col_dup(st, 12);

	sqlite3_reset(rst);
	bind_text(rst, 1, en->id);
	size_t cap = 0;
	int rc;
	while ((rc = sqlite3_step(rst)) == SQLITE_ROW) {
		if (en->nrcpts == cap) {
			cap = cap ? cap * 2 : 4;
			en->rcpts = xreallocarray(en->rcpts, cap, sizeof(char *));
			en->rcpt_states = xreallocarray(en->rcpt_states, cap, sizeof(char *));
		}
		en->rcpts[en->nrcpts] = col_dup(rst, 0);
		en->rcpt_states[en->nrcpts] = col_dup(rst, 1);
		if (en->rcpts[en->nrcpts] == NULL)
			en->rcpts[en->nrcpts] = xstrdup("");
		if (en->rcpt_states[en->nrcpts] == NULL)
			en->rcpt_states[en->nrcpts] = xstrdup("held");
		en->nrcpts++;
	}
	if (rc != SQLITE_DONE)
		return dberr(qs, "rcpt");
	return 0;
}

long
qstore_list(struct qstore *qs, const struct qfilter *f,
    int (*cb)(const struct qstore_entry *, void *), void *arg)
{
	struct buf sql = BUF_INIT;
	sqlite3_stmt *st, *rst;
	char lrcpt[1024], lfrom[1024];
	long n = 0;
	int i = 1, rc;

	buf_adds(&sql, "SELECT " ENTRY_COLS " FROM msg WHERE 1");
	if (!f->all_states)
		buf_adds(&sql, " AND state IN ('held','releasing')");
	if (f->since)
		buf_adds(&sql, " AND time >= ?");
	if (f->until)
		buf_adds(&sql, " AND time < ?");
	if (f->rcpt)
		buf_adds(&sql, " AND id IN (SELECT id FROM rcpt WHERE laddr = ?)");
	if (f->from)
		buf_adds(&sql, " AND (instr(lower(sender), ?) > 0 OR instr(lower(hfrom), ?) > 0)");
	if (f->has_min_score)
		buf_adds(&sql, " AND score >= ?");
	if (f->symbol)
		buf_adds(&sql, " AND instr(symbols, ?) > 0");
	buf_adds(&sql, " ORDER BY time DESC, id DESC");
	if (f->limit > 0)
		buf_adds(&sql, " LIMIT ?");
	st = prep(qs, sql.data);
	buf_free(&sql);
	if (st == NULL)
		return -1;
	if (f->since)
		sqlite3_bind_int64(st, i++, (sqlite3_int64)f->since);
	if (f->until)
		sqlite3_bind_int64(st, i++, (sqlite3_int64)f->until);
	if (f->rcpt) {
		lower_copy(f->rcpt, lrcpt, sizeof(lrcpt));
		bind_text(st, i++, lrcpt);
	}
	if (f->from) {
		lower_copy(f->from, lfrom, sizeof(lfrom));
		bind_text(st, i++, lfrom);
		bind_text(st, i++, lfrom);
	}
	if (f->has_min_score)
		sqlite3_bind_double(st, i++, f->min_score);
	if (f->symbol)
		bind_text(st, i++, f->symbol);
	if (f->limit > 0)
		sqlite3_bind_int64(st, i++, f->limit);
	if ((rst = prep(qs, "SELECT addr, state FROM rcpt WHERE id = ? ORDER BY rowid")) == NULL) {
		sqlite3_finalize(st);
		return -1;
	}
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct qstore_entry en;
		if (entry_from_row(qs, st, rst, &en) < 0) {
			qstore_entry_clear(&en);
			n = -1;
			break;
		}
		n++;
		int stop = cb(&en, arg);
		qstore_entry_clear(&en);
		if (stop)
			break;
	}
	if (n >= 0 && rc != SQLITE_ROW && rc != SQLITE_DONE)
		n = dberr(qs, "list");
	sqlite3_finalize(rst);
	sqlite3_finalize(st);
	return n;
}

int
qstore_get(struct qstore *qs, const char *id, struct qstore_entry *en)
{
	sqlite3_stmt *st, *rst;
	int rc, r;

	memset(en, 0, sizeof(*en));
	if ((st = prep(qs, "SELECT " ENTRY_COLS " FROM msg WHERE id = ?")) == NULL)
		return -1;
	if ((rst = prep(qs, "SELECT addr, state FROM rcpt WHERE id = ? ORDER BY rowid")) == NULL) {
		sqlite3_finalize(st);
		return -1;
	}
	bind_text(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		r = entry_from_row(qs, st, rst, en);
	else if (rc == SQLITE_DONE)
		r = 1;
	else
		r = dberr(qs, "get");
	sqlite3_finalize(rst);
	sqlite3_finalize(st);
	return r;
}

int
qstore_read(struct qstore *qs, const char *id, struct envelope *e, char **msg, size_t *len)
{
	char path[PATH_MAX], *err = NULL;
	size_t got = 0, want;
	int fd;

	*msg = NULL;
	*len = 0;
	if (!spool_valid_qid(id))
		return seterr(qs, "not a quarantine id", NULL);
	snprintf(path, sizeof(path), "%s/%s", qs->msgdir, id);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return seterr(qs, path, strerror(errno));
	if (spool_read_envelope_fd(fd, e, &err) < 0) {
		seterr(qs, path, err);
		free(err);
		close(fd);
		return -1;
	}
	want = (size_t)e->data_len;
	*msg = xmalloc(want + 1);
	while (got < want) {
		ssize_t n = pread(fd, *msg + got, want - got, e->data_off + (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			seterr(qs, path, n < 0 ? strerror(errno) : "short read");
			free(*msg);
			*msg = NULL;
			envelope_clear(e);
			close(fd);
			return -1;
		}
		got += (size_t)n;
	}
	(*msg)[got] = '\0';
	*len = got;
	close(fd);
	return 0;
}

/* ------------------------------------------------------------------ */
/* release, delete                                                    */
/* ------------------------------------------------------------------ */

/* the message state follows its recipients: held while any is held */
static int
settle_msg_state(struct qstore *qs, const char *id, const char *by)
{
	char now[32];

	snprintf(now, sizeof(now), "%lld", (long long)time(NULL));
	return run(qs, "UPDATE msg SET state = CASE"
	    " WHEN EXISTS (SELECT 1 FROM rcpt WHERE id = ?1 AND state = 'releasing') THEN 'releasing'"
	    " WHEN EXISTS (SELECT 1 FROM rcpt WHERE id = ?1 AND state = 'held') THEN 'held'"
	    " ELSE 'released' END, state_time = ?2, state_by = coalesce(?3, state_by)"
	    " WHERE id = ?1 AND state IN ('held','releasing','released')", id, now, by, NULL);
}

int
qstore_release(struct qstore *qs, const char *id, const char *only_rcpt, const char *by,
    unsigned flags, char new_qid[24])
{
	struct envelope orig, e;
	struct spool_writer *w;
	char *msg = NULL, *err = NULL, lr[1024], date[64], prefix[512];
	char rq[QID_SIZE];
	size_t len;
	sqlite3_stmt *st;
	int changed;

	(void)flags;
	memset(&e, 0, sizeof(e));
	if (!spool_valid_qid(id)) {
		seterr(qs, "not a quarantine id", id);
		return 1;
	}
	{
		struct qstore_entry en;
		int g = qstore_get(qs, id, &en);
		bool held = false;
		for (size_t i = 0; g == 0 && i < en.nrcpts; i++)
			if (strcmp(en.rcpt_states[i], "held") == 0)
				held = true;
		if (g == 0 && (en.state != QS_HELD || !held)) {
			seterr(qs, "not held (released, deleted or lost)", id);
			g = 1;
		} else if (g == 1) {
			seterr(qs, "no such message", id);
		}
		qstore_entry_clear(&en);
		if (g != 0)
			return g;
	}
	if (qstore_read(qs, id, &orig, &msg, &len) < 0)
		return -1;
	if (only_rcpt)
		lower_copy(only_rcpt, lr, sizeof(lr));
	spool_new_qid(rq);

	/* 1: mark the recipients releasing, with the queue id they will get */
	if (exec(qs, "BEGIN IMMEDIATE") < 0)
		goto fail;
	changed = run(qs, only_rcpt ?
	    "UPDATE rcpt SET state = 'releasing', release_qid = ?2 WHERE id = ?1 AND state = 'held' AND laddr = ?3" :
	    "UPDATE rcpt SET state = 'releasing', release_qid = ?2 WHERE id = ?1 AND state = 'held'",
	    id, rq, only_rcpt ? lr : NULL, NULL);
	if (changed <= 0 || settle_msg_state(qs, id, NULL) < 0 || exec(qs, "COMMIT") < 0) {
		(void)exec(qs, "ROLLBACK");
		envelope_clear(&orig);
		free(msg);
		if (changed == 0) {
			seterr(qs, "nothing held to release", only_rcpt);
			return 1;
		}
		return -1;
	}

	/* 2: the envelope as received, for the recipients being released */
	moat_strlcpy(e.qid, rq, sizeof(e.qid));
	e.arrival = time(NULL);
	e.sender = xstrdup(orig.sender ? orig.sender : "");
	e.envid = orig.envid ? xstrdup(orig.envid) : NULL;
	e.ret = orig.ret;
	e.body = orig.body;
	e.smtputf8 = orig.smtputf8;
	e.client_addr = orig.client_addr ? xstrdup(orig.client_addr) : NULL;
	e.client_name = orig.client_name ? xstrdup(orig.client_name) : NULL;
	e.helo = orig.helo ? xstrdup(orig.helo) : NULL;
	e.proto = orig.proto ? xstrdup(orig.proto) : NULL;
	if ((st = prep(qs, "SELECT laddr FROM rcpt WHERE id = ? AND state = 'releasing' AND release_qid = ?")) == NULL)
		goto undo;
	bind_text(st, 1, id);
	bind_text(st, 2, rq);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *la = (const char *)sqlite3_column_text(st, 0);
		for (size_t i = 0; la && i < orig.nrcpts; i++) {
			lower_copy(orig.rcpts[i].addr, lr, sizeof(lr));
			if (strcmp(lr, la) == 0) {
				envelope_add_rcpt(&e, orig.rcpts[i].addr, orig.rcpts[i].orcpt,
				    orig.rcpts[i].notify);
				break;
			}
		}
	}
	sqlite3_finalize(st);
	if (e.nrcpts == 0) {
		seterr(qs, "release: recipients not in the stored envelope", NULL);
		goto undo;
	}

	/* 3: inject (durable when spool_commit returns) */
	rfc5322_date(time(NULL), date, sizeof(date));
	{
		char who[128];
		moat_strlcpy(who, by && *by ? by : "unknown", sizeof(who));
		for (char *p = who; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				*p = '?';
		snprintf(prefix, sizeof(prefix), "X-Moat-Released: %s by %s\r\n", date, who);
	}
	if ((w = spool_begin(&e, prefix, &err)) == NULL) {
		seterr(qs, "release", err);
		free(err);
		goto undo;
	}
	/* the verdict's added headers (X-Spam-*, Authentication-Results) go
	 * in front of the message, as relay and local delivery emit them */
	if (orig.add_headers_len)
		spool_write(w, orig.add_headers, orig.add_headers_len);
	spool_write(w, msg, len);
	if (spool_commit(w, &err) < 0) {
		seterr(qs, "release", err);
		free(err);
		spool_writer_free(w);
		goto undo;
	}
	spool_writer_free(w);

	/* 4: done */
	{
		char now[32];
		snprintf(now, sizeof(now), "%lld", (long long)time(NULL));
		if (exec(qs, "BEGIN IMMEDIATE") < 0 ||
		    run(qs, "UPDATE rcpt SET state = 'released' WHERE id = ? AND state = 'releasing'"
		    " AND release_qid = ?", id, rq, NULL, NULL) < 0 ||
		    settle_msg_state(qs, id, by) < 0 || exec(qs, "COMMIT") < 0) {
			/* the next open finds queue/<rq> and finishes */
			(void)exec(qs, "ROLLBACK");
			log_warnx("qid=%s event=quarantine-release-unfinished new-qid=%s error=\"%s\"",
			    id, rq, esc(qs->err));
		}
	}
	log_notice("qid=%s event=quarantine-released new-qid=%s nrcpt=%zu by=%s", id, rq, e.nrcpts,
	    esc(by ? by : "unknown"));
	if (new_qid)
		moat_strlcpy(new_qid, rq, 24);
	envelope_clear(&e);
	envelope_clear(&orig);
	free(msg);
	return 0;
undo:
	{
		char keep[sizeof(qs->err)];
		memcpy(keep, qs->err, sizeof(keep));
		(void)run(qs, "UPDATE rcpt SET state = 'held', release_qid = NULL WHERE id = ?"
		    " AND state = 'releasing' AND release_qid = ?", id, rq, NULL, NULL);
		(void)settle_msg_state(qs, id, NULL);
		memcpy(qs->err, keep, sizeof(keep));
	}
fail:
	envelope_clear(&e);
	envelope_clear(&orig);
	free(msg);
	return -1;
}

int
qstore_delete(struct qstore *qs, const char *id, const char *by)
{
	char path[PATH_MAX], now[32];
	int n;

	if (!spool_valid_qid(id)) {
		seterr(qs, "not a quarantine id", id);
		return 1;
	}
	snprintf(now, sizeof(now), "%lld", (long long)time(NULL));
	/* row first: a crash before the unlink leaves a 'deleted' row whose
	 * file qstore_check removes */
	n = run(qs, "UPDATE msg SET state = 'deleted', state_time = ?2, state_by = ?3"
	    " WHERE id = ?1 AND state IN ('held','released')", id, now, by, NULL);
	if (n < 0)
		return -1;
	if (n == 0) {
		seterr(qs, "no such message (or releasing, deleted)", id);
		return 1;
	}
	(void)run(qs, "UPDATE rcpt SET state = 'deleted' WHERE id = ? AND state = 'held'", id, NULL,
	    NULL, NULL);
	snprintf(path, sizeof(path), "%s/%s", qs->msgdir, id);
	if (unlink(path) < 0 && errno != ENOENT)
		log_warn("qid=%s event=quarantine-delete unlink %s", id, path);
	log_notice("qid=%s event=quarantine-deleted by=%s", id, esc(by ? by : "unknown"));
	return 0;
}

/* ------------------------------------------------------------------ */
/* retention                                                          */
/* ------------------------------------------------------------------ */

static int
purge_one(struct qstore *qs, const char *id, long long size, time_t t, const char *why)
{
	char path[PATH_MAX];

	if (run(qs, "UPDATE msg SET state = 'deleted' WHERE id = ?", id, NULL, NULL, NULL) < 0)
		return -1;
	snprintf(path, sizeof(path), "%s/%s", qs->msgdir, id);
	if (unlink(path) < 0 && errno != ENOENT)
		log_warn("qid=%s event=quarantine-purge unlink %s", id, path);
	if (run(qs, "DELETE FROM rcpt WHERE id = ?", id, NULL, NULL, NULL) < 0 ||
	    run(qs, "DELETE FROM msg WHERE id = ?", id, NULL, NULL, NULL) < 0)
		return -1;
	log_notice("qid=%s event=quarantine-purged reason=%s size=%lld age=%llds", id, why, size,
	    (long long)(time(NULL) - t));
	return 0;
}

long
qstore_purge(struct qstore *qs, long long max_age, long long max_bytes)
{
	sqlite3_stmt *st;
	struct {
		char id[24];
		long long size;
		time_t t;
		bool counts;            /* its file is there */
	} *v = NULL;
	size_t nv = 0, cap = 0;
	long long total = 0;
	long n = 0;
	time_t now = time(NULL);

	/* everything, oldest first: age first, then the size cap */
	if ((st = prep(qs, "SELECT id, size, time, state FROM msg ORDER BY time ASC, id ASC")) == NULL)
		return -1;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(st, 0);
		const char *state = (const char *)sqlite3_column_text(st, 3);
		if (id == NULL || (state && strcmp(state, "releasing") == 0))
			continue;       /* a release in flight is never purged */
		if (nv == cap) {
			cap = cap ? cap * 2 : 64;
			v = xreallocarray(v, cap, sizeof(*v));
		}
		moat_strlcpy(v[nv].id, id, sizeof(v[nv].id));
		v[nv].size = sqlite3_column_int64(st, 1);
		v[nv].t = (time_t)sqlite3_column_int64(st, 2);
		v[nv].counts = !(state && (strcmp(state, "deleted") == 0 || strcmp(state, "lost") == 0));
		if (v[nv].counts)
			total += v[nv].size;
		nv++;
	}
	sqlite3_finalize(st);
	for (size_t i = 0; i < nv; i++) {
		const char *why = NULL;
		if (max_age > 0 && v[i].t < now - max_age)
			why = "age";
		else if (!v[i].counts)
			continue;       /* no file: only age removes its record */
		else if (max_bytes > 0 && total > max_bytes)
			why = "size";
		else
			break;          /* oldest first: nothing later qualifies */
		if (purge_one(qs, v[i].id, v[i].size, v[i].t, why) < 0) {
			free(v);
			return -1;
		}
		if (v[i].counts)
			total -= v[i].size;
		n++;
	}
	free(v);
	return n;
}

/* ------------------------------------------------------------------ */
/* repair                                                             */
/* ------------------------------------------------------------------ */

/* recipients left 'releasing' by a crash: injected (queue/<rq> exists) →
 * released; not → held again */
static long
recover_releases(struct qstore *qs)
{
	sqlite3_stmt *st;
	long n = 0;
	struct item {
		char id[24], rq[24];
	} *v = NULL;
	size_t nv = 0, cap = 0;

	if ((st = prep(qs, "SELECT DISTINCT id, release_qid FROM rcpt WHERE state = 'releasing'")) == NULL)
		return -1;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(st, 0);
		const char *rq = (const char *)sqlite3_column_text(st, 1);
		if (nv == cap) {
			cap = cap ? cap * 2 : 8;
			v = xreallocarray(v, cap, sizeof(*v));
		}
		moat_strlcpy(v[nv].id, id ? id : "", sizeof(v[nv].id));
		moat_strlcpy(v[nv].rq, rq ? rq : "", sizeof(v[nv].rq));
		nv++;
	}
	sqlite3_finalize(st);
	for (size_t i = 0; i < nv; i++) {
		char path[PATH_MAX];
		bool done;
		snprintf(path, sizeof(path), "%s/spool/queue/%s", qs->statedir, v[i].rq);
		done = spool_valid_qid(v[i].rq) && access(path, F_OK) == 0;
		if (run(qs, done ?
		    "UPDATE rcpt SET state = 'released' WHERE id = ? AND release_qid = ? AND state = 'releasing'" :
		    "UPDATE rcpt SET state = 'held', release_qid = NULL WHERE id = ? AND release_qid = ? AND state = 'releasing'",
		    v[i].id, v[i].rq, NULL, NULL) < 0)
			continue;
		(void)settle_msg_state(qs, v[i].id, NULL);
		log_warnx("qid=%s event=quarantine-release-recovered new-qid=%s result=%s", v[i].id,
		    v[i].rq, done ? "released" : "rolled-back");
		n++;
	}
	free(v);
	return n;
}

long
qstore_check(struct qstore *qs)
{
	DIR *d;
	struct dirent *de;
	sqlite3_stmt *st;
	long n = 0, r;
	char path[PATH_MAX];

	if ((r = recover_releases(qs)) < 0)
		return -1;
	n += r;

	/* files without rows: re-index from the stored envelope; files of
	 * deleted rows: remove */
	if ((d = opendir(qs->msgdir)) == NULL)
		return seterr(qs, qs->msgdir, strerror(errno));
	if ((st = prep(qs, "SELECT state FROM msg WHERE id = ?")) == NULL) {
		closedir(d);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (!spool_valid_qid(de->d_name))
			continue;
		snprintf(path, sizeof(path), "%s/%s", qs->msgdir, de->d_name);
		sqlite3_reset(st);
		bind_text(st, 1, de->d_name);
		int rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			const char *s = (const char *)sqlite3_column_text(st, 0);
			if (s && strcmp(s, "deleted") == 0 && unlink(path) == 0) {
				log_notice("qid=%s event=quarantine-check removed=deleted-file", de->d_name);
				n++;
			}
			continue;
		}
		if (rc != SQLITE_DONE)
			continue;
		struct envelope e;
		char *err = NULL;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (spool_read_envelope_fd(fd, &e, &err) < 0 || strcmp(e.qid, de->d_name) != 0) {
			log_warnx("qid=%s event=quarantine-check unreadable=%s error=\"%s\"", de->d_name,
			    path, esc(err ? err : "qid mismatch"));
			if (err == NULL)
				envelope_clear(&e);
			free(err);
			close(fd);
			continue;
		}
		if (index_file(qs, fd, &e, NULL, false) == 0) {
			log_warnx("qid=%s event=quarantine-check reindexed from=<%s> nrcpt=%zu",
			    de->d_name, esc(e.sender), e.nrcpts);
			n++;
		}
		envelope_clear(&e);
		close(fd);
	}
	sqlite3_finalize(st);
	closedir(d);

	/* rows without files: lost */
	if ((st = prep(qs, "SELECT id FROM msg WHERE state IN ('held','releasing')")) == NULL)
		return -1;
	char (*lost)[24] = NULL;
	size_t nl = 0, cap = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(st, 0);
		if (id == NULL)
			continue;
		snprintf(path, sizeof(path), "%s/%s", qs->msgdir, id);
		if (access(path, F_OK) == 0 || errno != ENOENT)
			continue;
		if (nl == cap) {
			cap = cap ? cap * 2 : 8;
			lost = xreallocarray(lost, cap, sizeof(*lost));
		}
		moat_strlcpy(lost[nl++], id, sizeof(lost[0]));
	}
	sqlite3_finalize(st);
	for (size_t i = 0; i < nl; i++) {
		if (run(qs, "UPDATE msg SET state = 'lost', state_time = strftime('%s','now')"
		    " WHERE id = ?", lost[i], NULL, NULL, NULL) > 0) {
			log_warnx("qid=%s event=quarantine-check lost=1 (index row without a file)", lost[i]);
			n++;
		}
	}
	free(lost);
	return n;
}

/* ------------------------------------------------------------------ */
/* digest                                                             */
/* ------------------------------------------------------------------ */

struct digest_ctx {
	struct buf *body;
	long n;
};

static int
digest_cb(const struct qstore_entry *en, void *arg)
{
	struct digest_ctx *d = arg;
	struct tm tm;
	char when[32];

	gmtime_r(&en->time, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M", &tm);
	buf_printf(d->body, "%s  %s UTC  score %.1f\r\n  From: %.200s\r\n  Subject: %.200s\r\n\r\n",
	    en->id, when, en->score, en->hfrom && *en->hfrom ? en->hfrom : en->sender,
	    en->subject ? en->subject : "");
	d->n++;
	return 0;
}

long
qstore_digest_build(struct qstore *qs, const char *rcpt, time_t since, const char *from,
    struct buf *msg)
{
	struct qfilter f;
	struct buf body = BUF_INIT;
	struct digest_ctx d = { &body, 0 };
	char date[64], mid[QID_SIZE];
	long n;

	if (strchr(rcpt, '\r') || strchr(rcpt, '\n') || (from && (strchr(from, '\r') || strchr(from, '\n'))))
		return seterr(qs, "digest: bad address", NULL);
	memset(&f, 0, sizeof(f));
	f.rcpt = rcpt;
	f.since = since;
	if ((n = qstore_list(qs, &f, digest_cb, &d)) < 0) {
		buf_free(&body);
		return -1;
	}
	rfc5322_date(time(NULL), date, sizeof(date));
	spool_new_qid(mid);
	buf_printf(msg, "From: %s\r\nTo: <%s>\r\nSubject: Quarantine digest: %ld message%s held for %s\r\n"
	    "Date: %s\r\nMessage-ID: <digest.%s@moat>\r\nMIME-Version: 1.0\r\n"
	    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
	    "Auto-Submitted: auto-generated\r\n\r\n",
	    from ? from : "MAILER-DAEMON", rcpt, d.n, d.n == 1 ? "" : "s", rcpt, date, mid);
	buf_printf(msg, "These messages addressed to you were held as suspected spam.\r\n"
	    "Ask your mail administrator to release one by its id.\r\n\r\n");
	if (body.len)
		buf_add(msg, body.data, body.len);
	buf_free(&body);
	return d.n;
}
