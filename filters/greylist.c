/*
 * greylist.c - greylisting (see greylist.h and docs/filter-engine.md).
 *
 * Runs in: pool threads only (every call blocks on SQLite).  Each thread
 * has its own connection to STATE-DIR/greylist.db (WAL, so the threads
 * read concurrently; a decision is one short IMMEDIATE transaction, and
 * writers wait for each other through the busy timeout).
 * Input: the client address (ours), the envelope sender and recipient
 * (untrusted, already bounded by the SMTP parser); all SQL is prepared
 * with bound parameters.
 *
 * A triplet (client network, sender, recipient) seen for the first time is
 * deferred; a retry at least `delay` seconds later, and within `expire`
 * seconds of the first attempt, passes and confirms the triplet; a
 * confirmed triplet passes at once for `allow_time` after its last use.
 * A network whose retries confirmed `auto_clients` triplets passes at once
 * for any triplet (postgrey's --auto-whitelist-clients).  Expired rows
 * are purged by a separate pool job, at most once an hour
 * (greylist_purge_due), so no client waits for it.
 */
#include "config.h"
#include "greylist.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <sqlite3.h>

#define GL_PURGE_INTERVAL 3600

static const char gl_schema[] =
	"CREATE TABLE IF NOT EXISTS triplet ("
	" net TEXT NOT NULL,"
	" sender TEXT NOT NULL,"
	" rcpt TEXT NOT NULL,"
	" first INTEGER NOT NULL,"      /* first attempt (unix time) */
	" last INTEGER NOT NULL,"       /* last time it passed (or first) */
	" passed INTEGER NOT NULL,"     /* when it was confirmed; 0 = not yet */
	" count INTEGER NOT NULL,"      /* messages passed */
	" PRIMARY KEY (net, sender, rcpt)) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS client ("
	" net TEXT PRIMARY KEY NOT NULL,"
	" count INTEGER NOT NULL,"      /* triplets this network confirmed */
	" last INTEGER NOT NULL) WITHOUT ROWID;"
	"PRAGMA user_version=1;";

enum { Q_GET, Q_NEW, Q_PASS, Q_REUSE, Q_CGET, Q_CADD, Q_CTOUCH, Q_PURGE_T, Q_PURGE_C, Q_BEGIN,
    Q_COMMIT, Q_ROLLBACK, Q_N };
static const char *const gl_sql[Q_N] = {
	[Q_GET] = "SELECT first, last, passed FROM triplet WHERE net = ?1 AND sender = ?2 AND rcpt = ?3",
	[Q_NEW] = "INSERT OR REPLACE INTO triplet (net, sender, rcpt, first, last, passed, count)"
	    " VALUES (?1, ?2, ?3, ?4, ?4, 0, 0)",
	[Q_PASS] = "UPDATE triplet SET passed = ?4, last = ?4, count = count + 1"
	    " WHERE net = ?1 AND sender = ?2 AND rcpt = ?3",
	[Q_REUSE] = "UPDATE triplet SET last = ?4, count = count + 1"
	    " WHERE net = ?1 AND sender = ?2 AND rcpt = ?3",
	[Q_CGET] = "SELECT count, last FROM client WHERE net = ?1",
	[Q_CADD] = "INSERT INTO client (net, count, last) VALUES (?1, 1, ?2)"
	    " ON CONFLICT (net) DO UPDATE SET count = count + 1, last = ?2",
	[Q_CTOUCH] = "UPDATE client SET last = ?2 WHERE net = ?1",
	[Q_PURGE_T] = "DELETE FROM triplet WHERE (passed = 0 AND first < ?1) OR (passed > 0 AND last < ?2)",
	[Q_PURGE_C] = "DELETE FROM client WHERE last < ?1",
	[Q_BEGIN] = "BEGIN IMMEDIATE",
	[Q_COMMIT] = "COMMIT",
	[Q_ROLLBACK] = "ROLLBACK",
};

struct gl_db {
	sqlite3 *db;
	sqlite3_stmt *st[Q_N];
	char    path[PATH_MAX];
};

static pthread_key_t gl_key;
static pthread_once_t gl_once = PTHREAD_ONCE_INIT;
static _Atomic long long gl_last_purge;

static void
gl_close(struct gl_db *g)
{
	if (g->db == NULL)
		return;
	for (int i = 0; i < Q_N; i++) {
		sqlite3_finalize(g->st[i]);
		g->st[i] = NULL;
	}
	sqlite3_close(g->db);
	g->db = NULL;
	g->path[0] = '\0';
}

static void
gl_tls_free(void *p)
{
	gl_close(p);
	free(p);
}

static void
gl_key_init(void)
{
	if (pthread_key_create(&gl_key, gl_tls_free) != 0)
		fatalx("greylist: pthread_key_create failed");
}

static char *
gl_errf(const char *path, const char *what)
{
	char msg[1024];
	snprintf(msg, sizeof(msg), "greylist: %s: %s", path, what);
	return xstrdup(msg);
}

/* this thread's connection to dbpath, opened (and created) on first use */
static struct gl_db *
gl_handle(const char *dbpath, char **err)
{
	struct gl_db *g;
	char *emsg = NULL;
	int fd;

	pthread_once(&gl_once, gl_key_init);
	if ((g = pthread_getspecific(gl_key)) == NULL) {
		g = xcalloc(1, sizeof(*g));
		if (pthread_setspecific(gl_key, g) != 0)
			fatalx("greylist: pthread_setspecific failed");
	}
	if (g->db && strcmp(g->path, dbpath) == 0)
		return g;
	gl_close(g);
	if (strlen(dbpath) >= sizeof(g->path)) {
		*err = gl_errf(dbpath, "path too long");
		return NULL;
	}
	/* create the file ourselves: senders and recipients are private */
	if ((fd = open(dbpath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0) {
		*err = gl_errf(dbpath, strerror(errno));
		return NULL;
	}
	close(fd);
	if (sqlite3_open_v2(dbpath, &g->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
	    SQLITE_OK) {
		*err = gl_errf(dbpath, g->db ? sqlite3_errmsg(g->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(g->db, 5000);
	/* WAL: readers never wait for the writer; NORMAL: a lost last
	 * transaction after a power failure only greylists a triplet again */
	if (sqlite3_exec(g->db, "PRAGMA journal_mode=WAL", NULL, NULL, &emsg) != SQLITE_OK ||
	    sqlite3_exec(g->db, "PRAGMA synchronous=NORMAL", NULL, NULL, &emsg) != SQLITE_OK ||
	    sqlite3_exec(g->db, gl_schema, NULL, NULL, &emsg) != SQLITE_OK) {
		*err = gl_errf(dbpath, emsg ? emsg : "cannot create the schema");
		sqlite3_free(emsg);
		goto fail;
	}
	for (int i = 0; i < Q_N; i++)
		if (sqlite3_prepare_v3(g->db, gl_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &g->st[i],
		    NULL) != SQLITE_OK) {
			*err = gl_errf(dbpath, sqlite3_errmsg(g->db));
			goto fail;
		}
	moat_strlcpy(g->path, dbpath, sizeof(g->path));
	return g;
fail:
	gl_close(g);
	return NULL;
}

void
greylist_thread_drop(void)
{
	struct gl_db *g;

	pthread_once(&gl_once, gl_key_init);
	if ((g = pthread_getspecific(gl_key)) != NULL)
		gl_close(g);
}

/* run a statement to completion (no rows wanted): SQLITE_DONE or an error */
static int
gl_exec(struct gl_db *g, int q)
{
	int rc = sqlite3_step(g->st[q]);
	sqlite3_reset(g->st[q]);
	sqlite3_clear_bindings(g->st[q]);
	return rc;
}

static void
gl_bind3(struct gl_db *g, int q, const char *net, const char *sender, const char *rcpt,
    long long t)
{
	sqlite3_bind_text(g->st[q], 1, net, -1, SQLITE_STATIC);
	sqlite3_bind_text(g->st[q], 2, sender, -1, SQLITE_STATIC);
	sqlite3_bind_text(g->st[q], 3, rcpt, -1, SQLITE_STATIC);
	if (t >= 0)
		sqlite3_bind_int64(g->st[q], 4, t);
}

bool
greylist_net(const struct sockaddr *sa, char *out, size_t outsz)
{
	char a[INET6_ADDRSTRLEN];
	unsigned char b[16];

	if (sa->sa_family == AF_INET) {
		memcpy(b, &((const struct sockaddr_in *)sa)->sin_addr, 4);
		goto v4;
	}
	if (sa->sa_family != AF_INET6)
		return false;
	memcpy(b, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
	if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)b)) {
		memmove(b, b + 12, 4);
		goto v4;
	}
	memset(b + 8, 0, 8);            /* /64 */
	if (inet_ntop(AF_INET6, b, a, sizeof(a)) == NULL)
		return false;
	return (size_t)snprintf(out, outsz, "%s/64", a) < outsz;
v4:
	b[3] = 0;                       /* /24 */
	if (inet_ntop(AF_INET, b, a, sizeof(a)) == NULL)
		return false;
	return (size_t)snprintf(out, outsz, "%s/24", a) < outsz;
}

static bool
gl_wordch(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

void
greylist_sender(const char *sender, const char *delim, char *out, size_t outsz)
{
	const char *at = strrchr(sender, '@'), *lp = sender, *end;
	size_t o = 0;
	char dc = delim && delim[0] && !delim[1] ? delim[0] : '\0';

	if (outsz == 0)
		return;
	if (at == NULL) {               /* <> or a bare local part */
		moat_strlcpy(out, sender, outsz);
		ascii_lower(out);
		return;
	}
	/* BATV: prvs=TAG=user@domain (RFC draft, used by many MTAs) */
	if (!ascii_strncasecmp(lp, "prvs=", 5)) {
		const char *eq = memchr(lp + 5, '=', (size_t)(at - lp - 5));
		if (eq && eq + 1 < at)
			lp = eq + 1;
	}
	end = at;
	if (dc) {
		const char *d = memchr(lp, dc, (size_t)(end - lp));
		if (d && d > lp)
			end = d;
	}
	/* SRS0=HASH=TT=domain=local: the hash and the timestamp change daily */
	if (end - lp > 5 && !ascii_strncasecmp(lp, "SRS0=", 5)) {
		const char *h = memchr(lp + 5, '=', (size_t)(end - lp - 5));
		const char *ts = h ? memchr(h + 1, '=', (size_t)(end - h - 1)) : NULL;
		if (ts && outsz > 10) {
			memcpy(out, "srs0=#=#", 8);
			o = 8;
			lp = ts;
		}
	}
	/* postgrey's s/\b\d+\b/#/: a run of digits that stands alone (VERP
	 * bounce addresses number every message); "john1990" stays */
	for (const char *p = lp; p < end && o + 1 < outsz; p++) {
		bool word_before = p > lp && gl_wordch(p[-1]);
		const char *q = p;
		while (q < end && *q >= '0' && *q <= '9')
			q++;
		if (q > p && !word_before && (q == end || !gl_wordch(*q))) {
			out[o++] = '#';
			p = q - 1;
		} else
			out[o++] = *p;
	}
	for (const char *p = at; *p && o + 1 < outsz; p++)
		out[o++] = *p;
	out[o] = '\0';
	ascii_lower(out);
}

static long long
gl_purge(struct gl_db *g, const struct greylist_params *p, time_t now, char **err)
{
	long long n;

	sqlite3_bind_int64(g->st[Q_PURGE_T], 1, (long long)now - p->expire);
	sqlite3_bind_int64(g->st[Q_PURGE_T], 2, (long long)now - p->allow_time);
	if (gl_exec(g, Q_PURGE_T) != SQLITE_DONE) {
		*err = gl_errf(g->path, sqlite3_errmsg(g->db));
		return -1;
	}
	n = sqlite3_changes(g->db);
	sqlite3_bind_int64(g->st[Q_PURGE_C], 1, (long long)now - p->allow_time);
	if (gl_exec(g, Q_PURGE_C) != SQLITE_DONE) {
		*err = gl_errf(g->path, sqlite3_errmsg(g->db));
		return -1;
	}
	return n + sqlite3_changes(g->db);
}

long long
greylist_purge(const char *dbpath, const struct greylist_params *p, time_t now, char **err)
{
	struct gl_db *g = gl_handle(dbpath, err);
	return g ? gl_purge(g, p, now, err) : -1;
}

/* the decision, inside the transaction */
static int
gl_decide(struct gl_db *g, const struct greylist_params *p, const char *net, const char *sender,
    const char *rcpt, long long now, struct greylist_result *res)
{
	sqlite3_stmt *st;
	long long first = 0, last = 0, passed = 0;
	bool found = false;
	int rc;

	if (p->auto_clients > 0) {
		long long cnt = 0, clast = 0;
		st = g->st[Q_CGET];
		sqlite3_bind_text(st, 1, net, -1, SQLITE_STATIC);
		if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			cnt = sqlite3_column_int64(st, 0);
			clast = sqlite3_column_int64(st, 1);
		}
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
		if (rc != SQLITE_ROW && rc != SQLITE_DONE)
			return -1;
		if (cnt >= p->auto_clients && now - clast <= p->allow_time) {
			sqlite3_bind_text(g->st[Q_CTOUCH], 1, net, -1, SQLITE_STATIC);
			sqlite3_bind_int64(g->st[Q_CTOUCH], 2, now);
			if (gl_exec(g, Q_CTOUCH) != SQLITE_DONE)
				return -1;
			res->action = GL_ALLOW;
			res->client = true;
			return 0;
		}
	}
	st = g->st[Q_GET];
	gl_bind3(g, Q_GET, net, sender, rcpt, -1);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		found = true;
		first = sqlite3_column_int64(st, 0);
		last = sqlite3_column_int64(st, 1);
		passed = sqlite3_column_int64(st, 2);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return -1;

	if (found && passed > 0 && now - last <= p->allow_time && now >= last) {
		/* confirmed before: pass at once */
		gl_bind3(g, Q_REUSE, net, sender, rcpt, now);
		if (gl_exec(g, Q_REUSE) != SQLITE_DONE)
			return -1;
		res->action = GL_ALLOW;
		return 0;
	}
	if (found && passed == 0 && now >= first && now - first <= p->expire) {
		if (now - first < p->delay) {
			/* retried too early: the delay still counts from the first attempt */
			res->action = GL_DEFER;
			res->retry = p->delay - (now - first);
			return 0;
		}
		gl_bind3(g, Q_PASS, net, sender, rcpt, now);
		if (gl_exec(g, Q_PASS) != SQLITE_DONE)
			return -1;
		if (p->auto_clients > 0) {
			sqlite3_bind_text(g->st[Q_CADD], 1, net, -1, SQLITE_STATIC);
			sqlite3_bind_int64(g->st[Q_CADD], 2, now);
			if (gl_exec(g, Q_CADD) != SQLITE_DONE)
				return -1;
		}
		res->action = GL_PASS;
		return 0;
	}
	/* new, expired, or the clock went back: start over */
	gl_bind3(g, Q_NEW, net, sender, rcpt, now);
	if (gl_exec(g, Q_NEW) != SQLITE_DONE)
		return -1;
	res->action = GL_DEFER;
	res->retry = p->delay;
	return 0;
}

int
greylist_check(const char *dbpath, const struct greylist_params *p, const char *net,
    const char *sender, const char *rcpt, time_t now, struct greylist_result *res, char **err)
{
	struct gl_db *g;

	memset(res, 0, sizeof(*res));
	res->action = GL_ERROR;
	*err = NULL;
	if ((g = gl_handle(dbpath, err)) == NULL)
		return -1;
	if (gl_exec(g, Q_BEGIN) != SQLITE_DONE) {
		*err = gl_errf(dbpath, sqlite3_errmsg(g->db));
		return -1;
	}
	if (gl_decide(g, p, net, sender, rcpt, (long long)now, res) < 0 ||
	    gl_exec(g, Q_COMMIT) != SQLITE_DONE) {
		*err = gl_errf(dbpath, sqlite3_errmsg(g->db));
		if (!sqlite3_get_autocommit(g->db))
			gl_exec(g, Q_ROLLBACK);
		memset(res, 0, sizeof(*res));
		res->action = GL_ERROR;
		return -1;
	}
	return 0;
}

bool
greylist_purge_due(time_t now)
{
	long long last = atomic_load(&gl_last_purge);

	return (long long)now - last >= GL_PURGE_INTERVAL &&
	    atomic_compare_exchange_strong(&gl_last_purge, &last, (long long)now);
}
