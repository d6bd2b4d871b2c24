/*
 * journal.c - the event journal and the metrics hooks (see journal.h).
 * Runs in: the worker; hooks on the loop (the Message-ID hook in pool
 * threads too), the writer in a pool thread, one batch at a time.
 */
#include "config.h"
#include "journal.h"
#include "buf.h"
#include "conf.h"
#include "engine.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "spool.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <sqlite3.h>

#define PENDING_MAX 100000      /* rows waiting for the writer; beyond, dropped and counted */
#define PENDING_BYTES (32 << 20) /* and their bytes */
#define FIELD_MAX   1000        /* bytes kept of any field */

const char journal_schema[] =
    "CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, ts REAL NOT NULL,"
    " type TEXT NOT NULL, sid TEXT, qid TEXT, msgid TEXT, ip TEXT, sender TEXT, rcpt TEXT,"
    " action TEXT, score REAL, symbols TEXT, dest TEXT, attempts INTEGER, detail TEXT);"
    "CREATE INDEX IF NOT EXISTS events_ts ON events(ts);"
    "CREATE INDEX IF NOT EXISTS events_qid ON events(qid);"
    "CREATE INDEX IF NOT EXISTS events_sid ON events(sid);"
    "CREATE INDEX IF NOT EXISTS events_msgid ON events(msgid);";

enum { F_TYPE, F_SID, F_QID, F_MSGID, F_IP, F_SENDER, F_RCPT, F_ACTION, F_SYMBOLS, F_DEST,
    F_DETAIL, NF };
static const char *fname[NF] = { "type", "sid", "qid", "msgid", "ip", "sender", "rcpt",
    "action", "symbols", "dest", "detail" };

struct jrow {
	struct jrow *next;
	double  ts;
	char   *f[NF];
	double  score;
	bool    has_score;
	int     attempts;           /* -1: none */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct jrow *head, **tailp = &head;
static size_t npending, pending_bytes;
static unsigned long long dropped;

static const struct moat_conf *jc;
static struct event_base *jbase;
static struct pool *jpool;
static struct event *ev_flush;
static bool flushing;
static sqlite3 *db;             /* used by one batch at a time (pool thread, or stop) */
static time_t next_purge;
static int json_fd = -1;         /* log-json, opened before the privileges went */

static double
now_real(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct jrow *
row_new(const char *type)
{
	struct jrow *r = xcalloc(1, sizeof(*r));
	r->ts = now_real();
	r->f[F_TYPE] = xstrdup(type);
	r->attempts = -1;
	return r;
}

static void
row_set(struct jrow *r, int i, const char *v)
{
	size_t n;

	if (v == NULL)
		return;
	n = strnlen(v, FIELD_MAX);
	free(r->f[i]);
	r->f[i] = xmalloc(n + 1);
	memcpy(r->f[i], v, n);
	r->f[i][n] = '\0';
}

static void
row_free(struct jrow *r)
{
	for (int i = 0; i < NF; i++)
		free(r->f[i]);
	free(r);
}

static void
row_add(struct jrow *r)
{
	if (jc == NULL || (!jc->journal && !jc->log_json)) {
		row_free(r);
		return;
	}
	size_t bytes = sizeof(*r);
	for (int i = 0; i < NF; i++)
		bytes += r->f[i] ? strlen(r->f[i]) + 1 : 0;
	pthread_mutex_lock(&mu);
	if (npending >= PENDING_MAX || pending_bytes + bytes > PENDING_BYTES) {
		dropped++;
		pthread_mutex_unlock(&mu);
		row_free(r);
		return;
	}
	*tailp = r;
	tailp = &r->next;
	npending++;
	pending_bytes += bytes;
	pthread_mutex_unlock(&mu);
}

/* "<a>,<b>" (bounded) */
static void
rcpt_list(const struct envelope *env, struct buf *b)
{
	for (size_t i = 0; i < env->nrcpts && b->len < FIELD_MAX - 300; i++)
		buf_printf(b, "%s<%s>", i ? "," : "", env->rcpts[i].addr);
}

/* ---- hooks ---- */

void
journal_connect(const char *sid, const char *ip, const char *listener)
{
	struct jrow *r = row_new("connect");
	metric_inc(M_CONNECTIONS, listener, NULL);
	metric_gauge_add(M_SESSIONS_OPEN, listener, NULL, 1);
	row_set(r, F_SID, sid);
	row_set(r, F_IP, ip);
	{
		char d[300];
		snprintf(d, sizeof(d), "listener=%s", listener);
		row_set(r, F_DETAIL, d);
	}
	row_add(r);
}

void
journal_refused(const char *sid, const char *ip, const char *reason)
{
	struct jrow *r = row_new("refused");
	metric_inc(M_CONN_REFUSED, reason, NULL);
	row_set(r, F_SID, sid);
	row_set(r, F_IP, ip);
	row_set(r, F_DETAIL, reason);
	row_add(r);
}

void
journal_reject(const char *sid, const char *stage, const char *ip, const char *sender,
    const char *rcpt, const char *reply)
{
	struct jrow *r = row_new("reject");
	metric_inc(M_SMTP_REJECTS, stage, NULL);
	row_set(r, F_SID, sid);
	row_set(r, F_ACTION, stage);
	row_set(r, F_IP, ip);
	row_set(r, F_SENDER, sender);
	if (rcpt && *rcpt) {
		struct buf b = BUF_INIT;
		buf_printf(&b, "<%.*s>", 400, rcpt);
		row_set(r, F_RCPT, b.data);
		buf_free(&b);
	}
	row_set(r, F_DETAIL, reply);
	row_add(r);
}

/* one count per message for each recipient domain (ours by name, else "other") */
static void
count_domains(const struct envelope *env, const char *action)
{
	const char *seen[16];
	size_t nseen = 0;

	for (size_t i = 0; i < env->nrcpts && i < 1000; i++) {
		const char *at = strrchr(env->rcpts[i].addr, '@');
		const struct domain_conf *d = at ? conf_find_domain(jc, at + 1) : NULL;
		const char *name = d ? d->name : "other";
		size_t k;
		for (k = 0; k < nseen; k++)
			if (seen[k] == name || !strcmp(seen[k], name))
				break;
		if (k < nseen)
			continue;
		if (nseen < ARRAY_SIZE(seen))
			seen[nseen++] = name;
		metric_inc(M_MESSAGES_DOMAIN, name, action);
	}
}

void
journal_verdict(const char *sid, const char *ip, const struct envelope *env,
    const struct verdict *v)
{
	struct jrow *r = row_new("verdict");
	struct buf b = BUF_INIT;
	const char *action = verdict_action_name(v->action);

	metric_inc(M_MESSAGES, action, NULL);
	if (jc)
		count_domains(env, action);
	for (size_t i = 0; i < v->nsym; i++)
		metric_inc(M_SYMBOLS, v->sym[i].name, NULL);
	metric_observe(M_FILTER_SECONDS, v->elapsed_ms / 1000.0);
	row_set(r, F_SID, sid);
	row_set(r, F_QID, env->qid);
	row_set(r, F_IP, ip);
	row_set(r, F_SENDER, env->sender);
	rcpt_list(env, &b);
	row_set(r, F_RCPT, b.data);
	buf_free(&b);
	row_set(r, F_ACTION, action);
	r->score = v->score;
	r->has_score = true;
	verdict_symbols(v, &b);
	row_set(r, F_SYMBOLS, b.data);
	buf_free(&b);
	row_set(r, F_DETAIL, v->force_why[0] ? v->force_why : NULL);
	row_add(r);
}

void
journal_queued(const char *sid, const char *ip, const struct envelope *env, long long size,
    bool count_accept)
{
	struct jrow *r = row_new("queued");
	struct buf b = BUF_INIT;

	if (count_accept) {
		metric_inc(M_MESSAGES, "accept", NULL);
		if (jc)
			count_domains(env, "accept");
	}
	row_set(r, F_SID, sid);
	row_set(r, F_QID, env->qid);
	row_set(r, F_IP, ip);
	row_set(r, F_SENDER, env->sender);
	rcpt_list(env, &b);
	row_set(r, F_RCPT, b.data);
	if (count_accept)
		row_set(r, F_ACTION, "accept");
	buf_reset(&b);
	buf_printf(&b, "size=%lld", size);
	row_set(r, F_DETAIL, b.data);
	buf_free(&b);
	row_add(r);
}

void
journal_quarantined(const char *sid, const char *ip, const struct envelope *env, double score)
{
	struct jrow *r = row_new("quarantined");
	struct buf b = BUF_INIT;
	row_set(r, F_SID, sid);
	row_set(r, F_QID, env->qid);
	row_set(r, F_IP, ip);
	row_set(r, F_SENDER, env->sender);
	rcpt_list(env, &b);
	row_set(r, F_RCPT, b.data);
	buf_free(&b);
	r->score = score;
	r->has_score = true;
	row_add(r);
}

void
journal_message_id(const char *qid, const char *msg, size_t len)
{
	const char *p = msg, *end = msg + MIN(len, (size_t)256 * 1024);
	char id[256];
	size_t n = 0;

	/* the header section: "Message-ID:" at a line start, up to the blank line */
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		if (le == p || (le == p + 1 && *p == '\r'))
			break;
		if (le - p >= 11 && !ascii_strncasecmp(p, "message-id:", 11)) {
			const char *s = p + 11;
			while (s < le && (*s == ' ' || *s == '\t'))
				s++;
			/* folded: the id is on the next line */
			if ((s == le || (*s == '\r' && s + 1 == le)) && nl && nl + 1 < end &&
			    (nl[1] == ' ' || nl[1] == '\t')) {
				s = nl + 1;
				le = memchr(s, '\n', (size_t)(end - s));
				if (le == NULL)
					le = end;
				while (s < le && (*s == ' ' || *s == '\t'))
					s++;
			}
			for (; s < le && *s != '\r' && *s != ' ' && *s != '\t' && n + 1 < sizeof(id); s++)
				id[n++] = (*s >= 0x21 && *s < 0x7f) ? *s : '?';
			break;
		}
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	if (n == 0)
		return;
	id[n] = '\0';
	struct jrow *r = row_new("message");
	row_set(r, F_QID, qid);
	row_set(r, F_MSGID, id);
	row_add(r);
}

void
journal_delivery(const char *qid, const char *result, const char *rcpt, const char *dest,
    int attempts, const char *reply)
{
	struct jrow *r = row_new(result);
	struct buf b = BUF_INIT;

	metric_inc(M_DELIVERY, dest ? dest : "", result);
	row_set(r, F_QID, qid);
	buf_printf(&b, "<%.*s>", 400, rcpt ? rcpt : "");
	row_set(r, F_RCPT, b.data);
	buf_free(&b);
	row_set(r, F_DEST, dest);
	r->attempts = attempts;
	row_set(r, F_DETAIL, reply);
	row_add(r);
}

void
journal_disconnect(const char *listener)
{
	metric_gauge_add(M_SESSIONS_OPEN, listener, NULL, -1);
}

void
journal_dsn(const char *qid, const char *dsn_qid, const char *to)
{
	struct jrow *r = row_new("dsn");
	char d[128];

	row_set(r, F_QID, qid);
	row_set(r, F_SENDER, to);
	snprintf(d, sizeof(d), "dsn_qid=%s", dsn_qid);
	row_set(r, F_DETAIL, d);
	row_add(r);
}

void
journal_removed(const char *qid)
{
	struct jrow *r = row_new("removed");
	row_set(r, F_QID, qid);
	row_add(r);
}

void
journal_alert(const char *name, bool firing, const char *text)
{
	struct jrow *r = row_new(firing ? "alert" : "alert-cleared");
	row_set(r, F_ACTION, name);
	row_set(r, F_DETAIL, text);
	row_add(r);
}

/* ---- the writer ---- */

void
json_str(struct buf *b, const char *s)
{
	if (s == NULL)
		s = "";
	buf_addc(b, '"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\') {
			buf_addc(b, '\\');
			buf_addc(b, (char)*p);
		} else if (*p < 0x20 || *p >= 0x7f)
			buf_printf(b, "\\u%04x", *p);      /* bytes as Latin-1: always valid */
		else
			buf_addc(b, (char)*p);
	}
	buf_addc(b, '"');
}

static void
row_json(const struct jrow *r, struct buf *b)
{
	char ts[64];
	time_t t = (time_t)r->ts;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	buf_printf(b, "{\"time\":\"%s.%03dZ\",\"host\":", ts, (int)((r->ts - (double)t) * 1000));
	json_str(b, jc->hostname);
	for (int i = 0; i < NF; i++)
		if (r->f[i]) {
			buf_printf(b, ",\"%s\":", fname[i]);
			json_str(b, r->f[i]);
		}
	if (r->has_score)
		buf_printf(b, ",\"score\":%.2f", r->score);
	if (r->attempts >= 0)
		buf_printf(b, ",\"attempts\":%d", r->attempts);
	buf_adds(b, "}\n");
}

static int
db_open(char **err)
{
	char path[PATH_MAX];
	char *e = NULL;

	if (db)
		return 0;
	conf_path(jc, JOURNAL_DB, path, sizeof(path));
	{
		/* the journal holds addresses: not world-readable (SQLite gives
		 * its -wal and -shm the same mode) */
		int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
		if (fd >= 0)
			close(fd);
	}
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
	    SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		*err = xstrdup(db ? sqlite3_errmsg(db) : "cannot open");
		sqlite3_close(db);
		db = NULL;
		return -1;
	}
	sqlite3_busy_timeout(db, 10000);
	if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL, &e)
	    != SQLITE_OK || sqlite3_exec(db, journal_schema, NULL, NULL, &e) != SQLITE_OK) {
		*err = xstrdup(e ? e : sqlite3_errmsg(db));
		sqlite3_free(e);
		sqlite3_close(db);
		db = NULL;
		return -1;
	}
	return 0;
}

static int
db_write(struct jrow *list, char **err)
{
	sqlite3_stmt *st = NULL;
	int rc;

	if (db_open(err) < 0)
		return -1;
	if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	if (sqlite3_prepare_v2(db, "INSERT INTO events(ts,type,sid,qid,msgid,ip,sender,rcpt,action,"
	    "score,symbols,dest,attempts,detail) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)", -1, &st, NULL)
	    != SQLITE_OK)
		goto fail;
	for (struct jrow *r = list; r; r = r->next) {
		static const int col[NF] = { 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14 };
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
		sqlite3_bind_double(st, 1, r->ts);
		for (int i = 0; i < NF; i++)
			if (r->f[i])
				sqlite3_bind_text(st, col[i], r->f[i], -1, SQLITE_STATIC);
		if (r->has_score)
			sqlite3_bind_double(st, 10, r->score);
		if (r->attempts >= 0)
			sqlite3_bind_int(st, 13, r->attempts);
		if ((rc = sqlite3_step(st)) != SQLITE_DONE)
			goto fail;
	}
	sqlite3_finalize(st);
	st = NULL;
	if (time(NULL) >= next_purge) {
		char q[128];
		next_purge = time(NULL) + 3600;
		snprintf(q, sizeof(q), "DELETE FROM events WHERE ts < %lld",
		    (long long)time(NULL) - jc->journal_retention);
		if (sqlite3_exec(db, q, NULL, NULL, NULL) != SQLITE_OK)
			goto fail;
	}
	if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	return 0;
fail:
	*err = xstrdup(sqlite3_errmsg(db));
	sqlite3_finalize(st);
	sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

static int
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int
json_write(struct jrow *list, char **err)
{
	struct buf b = BUF_INIT;
	int fd, rc = 0;

	for (struct jrow *r = list; r; r = r->next)
		row_json(r, &b);
	if (b.len == 0)
		return 0;
	fd = json_fd;
	if (fd < 0 && (fd = open(jc->log_json, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640)) >= 0)
		json_fd = fd;
	if (fd < 0 || write_all(fd, b.data, b.len) < 0) {
		*err = xstrdup(strerror(errno));
		rc = -1;
	}
	buf_free(&b);
	return rc;
}

struct batch {
	struct jrow *list;
	size_t  n;
	unsigned long long dropped;
	char   *err;
};

static void
batch_take(struct batch *bt)
{
	pthread_mutex_lock(&mu);
	bt->list = head;
	bt->n = npending;
	bt->dropped = dropped;
	head = NULL;
	tailp = &head;
	npending = 0;
	pending_bytes = 0;
	dropped = 0;
	pthread_mutex_unlock(&mu);
}

/* BLOCKING (pool thread) */
static void
flush_work(void *arg)
{
	struct batch *bt = arg;
	char *err = NULL;

	if (jc->journal && db_write(bt->list, &err) < 0) {
		bt->err = xstrdup(err);
		free(err);
		err = NULL;
	}
	if (jc->log_json && json_write(bt->list, &err) < 0) {
		free(bt->err);
		bt->err = err;
	}
}

static void
batch_free(struct batch *bt)
{
	while (bt->list) {
		struct jrow *r = bt->list;
		bt->list = r->next;
		row_free(r);
	}
	free(bt->err);
	free(bt);
}

static void
flush_done(void *arg)
{
	struct batch *bt = arg;

	flushing = false;
	if (bt->err) {
		metric_inc(M_JOURNAL_ERRORS, NULL, NULL);
		log_warnx("journal event=write-error events=%zu error=\"%s\"", bt->n, esc(bt->err));
	}
	if (bt->dropped)
		log_warnx("journal event=dropped events=%llu (the writer fell behind)", bt->dropped);
	batch_free(bt);
}

static void
on_flush(evutil_socket_t fd, short ev, void *arg)
{
	struct batch *bt;
	bool empty;

	pthread_mutex_lock(&mu);
	empty = npending == 0;
	pthread_mutex_unlock(&mu);
	if (flushing || empty)
		return;
	bt = xcalloc(1, sizeof(*bt));
	batch_take(bt);
	flushing = true;
	pool_submit(jpool, flush_work, flush_done, bt);
}

void
journal_open_json(const struct moat_conf *c)
{
	if (c->log_json == NULL || json_fd >= 0)
		return;
	json_fd = open(c->log_json, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (json_fd < 0)
		log_warn("journal: cannot open log-json %s", c->log_json);
}

void
journal_start(struct event_base *base, struct pool *pool, const struct moat_conf *c)
{
	struct timeval tv = { 1, 0 };

	jc = c;
	jbase = base;
	jpool = pool;
	next_purge = time(NULL) + 60;
	if (!c->journal && !c->log_json)
		return;
	ev_flush = event_new(base, -1, EV_PERSIST, on_flush, NULL);
	evtimer_add(ev_flush, &tv);
}

/* after pool_free (no batch in flight): write the rest here */
void
journal_stop(void)
{
	if (ev_flush) {
		event_free(ev_flush);
		ev_flush = NULL;
	}
	if (jc && npending) {
		struct batch *bt = xcalloc(1, sizeof(*bt));
		batch_take(bt);
		flush_work(bt);
		flush_done(bt);
	}
	if (db) {
		sqlite3_close(db);
		db = NULL;
	}
	if (json_fd >= 0) {
		close(json_fd);
		json_fd = -1;
	}
	jc = NULL;
}
