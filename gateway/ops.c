/*
 * ops.c - the operations cache and start/stop of http, alerts, journal.
 * Runs in: the worker; the refresh in a pool thread, swapped in on the loop.
 */
#include "config.h"
#include "ops.h"
#include "alerts.h"
#include "conf.h"
#include "http.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "spool.h"
#include "util.h"
#include "worker.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <event2/event.h>
#include <sqlite3.h>

static struct ops_cache cur;
static struct event *ev_refresh;
static bool refreshing;
static time_t lists_wanted_until;

const struct ops_cache *
ops_cache(void)
{
	return &cur;
}

static void
cache_clear(struct ops_cache *oc)
{
	buf_free(&oc->queue_json);
	buf_free(&oc->quarantine_json);
	memset(oc, 0, sizeof(*oc));
}

/* newest mtime of the files in the AV database directory */
static long long
av_age(const char *dir)
{
	DIR *d;
	struct dirent *de;
	time_t newest = 0;
	char path[PATH_MAX];
	struct stat st;

	if (dir == NULL || (d = opendir(dir)) == NULL)
		return -1;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_mtime > newest)
			newest = st.st_mtime;
	}
	closedir(d);
	return newest ? (long long)(time(NULL) - newest) : -1;
}

struct qlist {
	struct buf *b;
	size_t  n;
};

static void
queue_one(const char *qid, void *arg)
{
	struct qlist *ql = arg;
	struct envelope env;
	char *err = NULL;

	if (ql->n >= OPS_LIST_MAX)
		return;
	memset(&env, 0, sizeof(env));
	if (spool_read_envelope(qid, &env, &err) < 0) {
		free(err);
		return;
	}
	buf_adds(ql->b, ql->n++ ? ",{\"qid\":" : "{\"qid\":");
	json_str(ql->b, qid);
	buf_printf(ql->b, ",\"arrival\":%lld,\"sender\":", (long long)env.arrival);
	json_str(ql->b, env.sender ? env.sender : "");
	buf_adds(ql->b, ",\"rcpts\":[");
	for (size_t i = 0; i < env.nrcpts && i < 100; i++) {
		if (i)
			buf_addc(ql->b, ',');
		json_str(ql->b, env.rcpts[i].addr);
	}
	buf_printf(ql->b, "],\"nrcpts\":%zu}", env.nrcpts);
	envelope_clear(&env);
}

/*
 * The quarantine's index, read-only.  Not through qstore_open(): that
 * repairs (empties quarantine/tmp, finishes interrupted releases) and
 * writes; a figure for /metrics every few seconds must not.
 */
static void
quarantine_scan(const struct moat_conf *c, struct ops_cache *oc)
{
	char path[PATH_MAX];
	sqlite3 *db = NULL;
	sqlite3_stmt *st;
	struct buf *b = &oc->quarantine_json;
	size_t n = 0;

	oc->quarantine_msgs = -1;
	conf_path(c, "quarantine/index.db", path, sizeof(path));
	if (access(path, F_OK) != 0) {
		oc->quarantine_msgs = 0;
		return;
	}
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		goto out;
	sqlite3_busy_timeout(db, 2000);
	if (sqlite3_prepare_v2(db, "SELECT count(*), coalesce(sum(size), 0) FROM msg WHERE state IN "
	    "('held','releasing')", -1, &st, NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW) {
			oc->quarantine_msgs = (long)sqlite3_column_int64(st, 0);
			oc->quarantine_bytes = sqlite3_column_int64(st, 1);
		}
		sqlite3_finalize(st);
	}
	if (!oc->lists_updated)
		goto out;       /* nobody asked for the listing */
	if (sqlite3_prepare_v2(db, "SELECT m.id, m.time, m.sender, m.subject, m.size, m.score, "
	    "m.symbols, (SELECT group_concat(addr, char(10)) FROM (SELECT addr FROM rcpt r WHERE "
	    "r.id = m.id LIMIT 100)) FROM msg m WHERE m.state IN ('held','releasing') ORDER BY m.time "
	    "DESC LIMIT ?1", -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int(st, 1, OPS_LIST_MAX);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *rc = (const char *)sqlite3_column_text(st, 7);
		buf_adds(b, n++ ? ",{\"id\":" : "{\"id\":");
		json_str(b, (const char *)sqlite3_column_text(st, 0));
		buf_printf(b, ",\"time\":%lld,\"sender\":", (long long)sqlite3_column_int64(st, 1));
		json_str(b, (const char *)sqlite3_column_text(st, 2));
		buf_adds(b, ",\"rcpts\":[");
		for (const char *p = rc; p && *p; ) {
			size_t len = strcspn(p, "\n");
			char *a = xstrndup(p, len);
			buf_adds(b, p == rc ? "" : ",");
			json_str(b, a);
			free(a);
			p += len;
			if (*p)
				p++;
		}
		buf_adds(b, "],\"subject\":");
		json_str(b, (const char *)sqlite3_column_text(st, 3));
		buf_printf(b, ",\"size\":%lld,\"score\":%.2f,\"symbols\":",
		    (long long)sqlite3_column_int64(st, 4), sqlite3_column_double(st, 5));
		json_str(b, (const char *)sqlite3_column_text(st, 6));
		buf_addc(b, '}');
	}
	sqlite3_finalize(st);
out:
	sqlite3_close(db);
}

/* BLOCKING (pool thread) */
static void
refresh_work(void *arg)
{
	struct ops_cache *oc = arg;
	const struct moat_conf *c = W->conf;
	struct statvfs sv;
	oc->av_age = av_age(c->av_database);
	oc->disk_free = oc->disk_total = -1;
	if (statvfs(c->state_dir, &sv) == 0) {
		oc->disk_free = (long long)sv.f_bavail * (long long)sv.f_frsize;
		oc->disk_total = (long long)sv.f_blocks * (long long)sv.f_frsize;
	}
	if (oc->lists_updated) {         /* asked for */
		struct qlist ql = { &oc->queue_json, 0 };
		buf_addc(&oc->queue_json, '[');
		spool_list(queue_one, &ql);
		buf_addc(&oc->queue_json, ']');
		buf_addc(&oc->quarantine_json, '[');
	}
	quarantine_scan(c, oc);
	if (oc->lists_updated) {
		buf_addc(&oc->quarantine_json, ']');
		oc->lists_updated = time(NULL);
	}
	oc->updated = time(NULL);
}

static void
refresh_done(void *arg)
{
	struct ops_cache *oc = arg;

	refreshing = false;
	cache_clear(&cur);
	cur = *oc;              /* the buffers move */
	free(oc);
}

static void
on_refresh(evutil_socket_t fd, short ev, void *arg)
{
	if (refreshing || W->draining)
		return;
	refreshing = true;
	struct ops_cache *oc = xcalloc(1, sizeof(*oc));
	oc->lists_updated = time(NULL) < lists_wanted_until;    /* nonzero: make the listings */
	pool_submit(W->pool, refresh_work, refresh_done, oc);
}

void
ops_want_lists(void)
{
	bool idle = time(NULL) >= lists_wanted_until;

	lists_wanted_until = time(NULL) + OPS_LIST_WANTED;
	if (idle || cur.lists_updated == 0)
		on_refresh(-1, 0, NULL);        /* the next answer has it */
}

/* the series every scrape should show, at 0 before the first event */
static void
metrics_preset(void)
{
	static const char *actions[] = { "accept", "tag", "quarantine", "reject", "tempfail" };
	static const char *refused[] = { "access-list", "max-sessions", "max-sessions-per-ip",
	    "block-list" };

	for (size_t i = 0; i < ARRAY_SIZE(actions); i++)
		metric_add(M_MESSAGES, actions[i], NULL, 0);
	for (size_t i = 0; i < ARRAY_SIZE(refused); i++)
		metric_add(M_CONN_REFUSED, refused[i], NULL, 0);
	for (size_t i = 0; i < W->conf->nlistens; i++)
		if (W->conf->listens[i].kind <= LISTEN_SMTPS) {
			metric_add(M_CONNECTIONS, W->conf->listens[i].spec, NULL, 0);
			metric_gauge_add(M_SESSIONS_OPEN, W->conf->listens[i].spec, NULL, 0);
		}
	metric_add(M_TLS, "ok", NULL, 0);
	metric_add(M_TLS, "failed", NULL, 0);
	metric_add(M_AUTH, "ok", NULL, 0);
	metric_add(M_AUTH, "failed", NULL, 0);
}

void
ops_start(void)
{
	struct timeval tv = { OPS_REFRESH, 0 };

	metrics_preset();

	journal_start(W->base, W->pool, W->conf);
	http_start();
	alerts_start();
	ev_refresh = event_new(W->base, -1, EV_PERSIST, on_refresh, NULL);
	evtimer_add(ev_refresh, &tv);
	on_refresh(-1, 0, NULL);
}

void
ops_drain(void)
{
	http_drain();
	alerts_stop();
}

void
ops_stop(void)
{
	if (ev_refresh) {
		event_free(ev_refresh);
		ev_refresh = NULL;
	}
	alerts_stop();
	http_stop();
	journal_stop();
	cache_clear(&cur);
}
