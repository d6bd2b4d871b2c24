/*
 * cmd_status.c - `moat status`: one glance at a running moatd.  The live
 * figures (pid, uptime, sessions, queue) come from the worker over the
 * control socket; today's traffic and the alerts raised from the event
 * journal; the quarantine and the AV database from the state-dir.  It
 * works without the http listener.
 */
#include "config.h"
#include "cli.h"
#include "buf.h"
#include "conf.h"
#include "privs.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

static void
duration(long long s, char *out, size_t outsz)
{
	if (s < 0)
		snprintf(out, outsz, "?");
	else if (s < 120)
		snprintf(out, outsz, "%llds", s);
	else if (s < 7200)
		snprintf(out, outsz, "%lldm%02llds", s / 60, s % 60);
	else if (s < 172800)
		snprintf(out, outsz, "%lldh%02lldm", s / 3600, s / 60 % 60);
	else
		snprintf(out, outsz, "%lldd%02lldh", s / 86400, s / 3600 % 24);
}

/* "key=value" from the control reply */
static long long
field(const char *rep, const char *key)
{
	size_t n = strlen(key);
	for (const char *p = rep; (p = strstr(p, key)) != NULL; p += n)
		if ((p == rep || p[-1] == ' ') && p[n] == '=')
			return strtoll(p + n + 1, NULL, 10);
	return -1;
}

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

int
cmd_status(struct moat_conf *c, int argc, char **argv)
{
	char path[PATH_MAX], d1[32], d2[32];
	char *rep;
	time_t now = time(NULL), midnight;
	struct tm tm;

	if (argc != 1) {
		fprintf(stderr, "usage: moat [-c FILE] status\n");
		return 2;
	}
	if (geteuid() == 0)
		privs_drop(c);          /* read as the run user: no root-owned -shm files */
	if ((rep = cli_control(c, "status")) == NULL) {
		conf_path(c, "control.sock", path, sizeof(path));
		fprintf(stderr, "moat: moatd is not running? (%s: %s)\n", path, strerror(errno));
		return 1;
	}
	if (strncmp(rep, "ok ", 3) != 0) {
		fprintf(stderr, "moat: %s\n", esc(rep));
		free(rep);
		return 1;
	}
	duration(field(rep, "uptime"), d1, sizeof(d1));
	printf("moatd       running pid=%lld up %s (%s, state-dir %s)\n", field(rep, "pid"), d1,
	    c->hostname, c->state_dir);
	printf("listeners  ");
	for (size_t i = 0; i < c->nlistens; i++)
		printf(" %s %s%s", listen_kind_name(c->listens[i].kind), c->listens[i].spec,
		    i + 1 < c->nlistens ? "," : "");
	printf("%s\n", c->nlistens ? "" : " none");
	printf("sessions    %lld open\n", field(rep, "sessions"));
	long long oldest = field(rep, "oldest");
	duration(oldest > 0 ? (long long)now - oldest : 0, d2, sizeof(d2));
	printf("queue       %lld messages (%lld deferred, %lld in delivery)%s%s\n",
	    field(rep, "queue"), field(rep, "deferred"), field(rep, "active"),
	    oldest > 0 ? ", oldest " : "", oldest > 0 ? d2 : "");
	free(rep);

	/* today, from the journal */
	localtime_r(&now, &tm);
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	tm.tm_isdst = -1;
	midnight = mktime(&tm);
	conf_path(c, "journal.db", path, sizeof(path));
	sqlite3 *db = NULL;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
		sqlite3_stmt *st;
		sqlite3_busy_timeout(db, 5000);
		if (sqlite3_prepare_v2(db, "SELECT sum(type = 'connect'), sum(type = 'verdict' OR "
		    "(type = 'queued' AND action = 'accept')), sum(action = 'accept' AND type IN "
		    "('verdict','queued')), sum(type = 'verdict' AND action = 'tag'), sum(type = 'verdict' "
		    "AND action = 'quarantine'), sum(type = 'verdict' AND action = 'reject'), "
		    "sum(type = 'verdict' AND action = 'tempfail'), sum(type = 'reject'), "
		    "sum(type = 'delivered'), sum(type = 'deferred'), sum(type IN ('bounced','expired')) "
		    "FROM events WHERE ts >= ?1", -1, &st, NULL) == SQLITE_OK) {
			sqlite3_bind_double(st, 1, (double)midnight);
			if (sqlite3_step(st) == SQLITE_ROW) {
#define COL(i) sqlite3_column_int64(st, i)
				printf("today       %lld connections, %lld messages: accept %lld, tag %lld, "
				    "quarantine %lld, reject %lld, tempfail %lld; %lld refused at SMTP\n",
				    COL(0), COL(1), COL(2), COL(3), COL(4), COL(5), COL(6), COL(7));
				printf("deliveries  today %lld delivered, %lld deferred, %lld bounced\n",
				    COL(8), COL(9), COL(10));
#undef COL
			}
			sqlite3_finalize(st);
		}
		/* alerts raised: the last alert event per name is not a clearing */
		if (sqlite3_prepare_v2(db, "SELECT action, ts FROM events e WHERE type = 'alert' AND "
		    "NOT EXISTS (SELECT 1 FROM events f WHERE f.type = 'alert-cleared' AND "
		    "f.action = e.action AND f.id > e.id) GROUP BY action", -1, &st, NULL) == SQLITE_OK) {
			int n = 0;
			printf("alerts     ");
			while (sqlite3_step(st) == SQLITE_ROW) {
				printf("%s %s", n ? "," : "", (const char *)sqlite3_column_text(st, 0));
				n++;
			}
			printf("%s\n", n ? "" : " none");
			sqlite3_finalize(st);
		}
	} else
		printf("today       (no event journal: %s)\n", path);
	sqlite3_close(db);

	/* the quarantine index, read-only (qstore_open would repair and write) */
	conf_path(c, "quarantine/index.db", path, sizeof(path));
	db = NULL;
	if (access(path, F_OK) != 0)
		printf("quarantine  0 messages held\n");
	else if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
		sqlite3_stmt *st;
		sqlite3_busy_timeout(db, 5000);
		if (sqlite3_prepare_v2(db, "SELECT count(*), coalesce(sum(size), 0) FROM msg WHERE "
		    "state IN ('held','releasing')", -1, &st, NULL) == SQLITE_OK &&
		    sqlite3_step(st) == SQLITE_ROW)
			printf("quarantine  %lld messages held (%lld KiB)\n", sqlite3_column_int64(st, 0),
			    (sqlite3_column_int64(st, 1) + 1023) / 1024);
		else
			printf("quarantine  ? (%s)\n", sqlite3_errmsg(db));
		sqlite3_finalize(st);
	} else
		printf("quarantine  ? (%s: %s)\n", path, db ? sqlite3_errmsg(db) : "cannot open");
	sqlite3_close(db);
	if (c->av_database) {
		long long age = av_age(c->av_database);
		duration(age, d1, sizeof(d1));
		printf("antivirus   database %s, newest file %s old\n", c->av_database, d1);
	} else
		printf("antivirus   %s\n", c->av_clamd ? "clamd" : "not configured");
	return 0;
}
