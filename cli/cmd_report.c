/*
 * cmd_report.c - `moat report [--since DURATION|DATE] [--json]`: a traffic
 * summary from the event journal (<state-dir>/journal.db, written by the
 * worker, see lib/journal.h): volume by action, top sending IPs and sender
 * domains, top symbols, top rejected, delivery per destination.
 * Runs as root (then as the run user) or the run user; read-only.
 */
#include "config.h"
#include "cli.h"
#include "buf.h"
#include "conf.h"
#include "journal.h"
#include "privs.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define TOP 10

/* the journal, read-only; NULL (message printed) if there is none */
sqlite3 *
cli_journal(const struct moat_conf *c, const char *cmd)
{
	char path[PATH_MAX];
	sqlite3 *db = NULL;

	conf_path(c, JOURNAL_DB, path, sizeof(path));
	if (geteuid() == 0)
		privs_drop(c);          /* never leave root-owned -shm/-wal files behind */
	if (access(path, R_OK) != 0) {
		fprintf(stderr, "moat: %s: no event journal at %s (%s); is \"journal\" on and has "
		    "moatd run?\n", cmd, path, strerror(errno));
		return NULL;
	}
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
		fprintf(stderr, "moat: %s: %s: %s\n", cmd, path, db ? sqlite3_errmsg(db) : "cannot open");
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_busy_timeout(db, 5000);
	return db;
}

/* "24h", "7d", "90m", "3600" (seconds ago) or "2026-11-23[ HH:MM[:SS]]" (local time) */
bool
cli_parse_since(const char *s, time_t *out)
{
	struct tm tm;
	char *end;
	long long v;

	memset(&tm, 0, sizeof(tm));
	if (strlen(s) >= 10 && s[4] == '-') {
		const char *r = strptime(s, "%Y-%m-%d", &tm);
		if (r && (*r == ' ' || *r == 'T'))
			r = strptime(r + 1, "%H:%M", &tm);
		if (r && *r == ':')
			r = strptime(r + 1, "%S", &tm);
		if (r == NULL || *r)
			return false;
		tm.tm_isdst = -1;
		*out = mktime(&tm);
		return *out != (time_t)-1;
	}
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || v < 0 || v > 100LL * 365 * 86400)
		return false;
	switch (*end) {
	case '\0': case 's': break;
	case 'm': v *= 60; break;
	case 'h': v *= 3600; break;
	case 'd': v *= 86400; break;
	case 'w': v *= 7 * 86400; break;
	default: return false;
	}
	if (*end && end[1])
		return false;
	*out = time(NULL) - (time_t)v;
	return true;
}

struct count {
	char   *key;
	long long n;
};

static int
cmp_count(const void *a, const void *b)
{
	const struct count *x = a, *y = b;
	if (x->n != y->n)
		return x->n < y->n ? 1 : -1;
	return strcmp(x->key, y->key);
}

/* symbols "A(1.00),B(2.50)": counted per name */
static void
count_symbols(struct count **v, size_t *n, const char *list)
{
	const char *p = list;
	while (p && *p) {
		const char *e = strchr(p, '(');
		const char *next = strchr(p, ',');
		if (e == NULL || (next && next < e))
			e = next ? next : p + strlen(p);
		size_t len = (size_t)(e - p);
		if (len > 0 && len < 128) {
			size_t i;
			for (i = 0; i < *n; i++)
				if (strlen((*v)[i].key) == len && !strncmp((*v)[i].key, p, len))
					break;
			if (i == *n && *n < 100000) {
				*v = xreallocarray(*v, *n + 1, sizeof(**v));
				(*v)[*n].key = xstrndup(p, len);
				(*v)[*n].n = 0;
				(*n)++;
			}
			if (i < *n)
				(*v)[i].n++;
		}
		p = next ? next + 1 : NULL;
	}
}

static void
print_json_str(const char *s)
{
	struct buf b = BUF_INIT;
	json_str(&b, s ? s : "");
	fwrite(b.data, 1, b.len, stdout);
	buf_free(&b);
}

/* run a "key, [key2,] count" query (parameters: since, limit); print it as
 * text under title, or as a JSON array under jkey */
static void
top(sqlite3 *db, const char *sql, time_t since, bool json, const char *title, const char *jkey,
    const char *k1, const char *k2)
{
	sqlite3_stmt *st;
	int i = 0, nc = k2 ? 2 : 1;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "moat: report: %s\n", sqlite3_errmsg(db));
		return;
	}
	sqlite3_bind_double(st, 1, (double)since);
	sqlite3_bind_int(st, 2, TOP);
	if (json)
		printf(",\"%s\":[", jkey);
	else
		printf("\n%s:\n", title);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *a = (const char *)sqlite3_column_text(st, 0);
		const char *b = k2 ? (const char *)sqlite3_column_text(st, 1) : NULL;
		long long n = sqlite3_column_int64(st, nc);
		if (json) {
			printf("%s{\"%s\":", i ? "," : "", k1);
			print_json_str(a);
			if (k2) {
				printf(",\"%s\":", k2);
				print_json_str(b);
			}
			printf(",\"count\":%lld}", n);
		} else
			printf("  %8lld  %s%s%s\n", n, a ? a : "-", k2 ? "  " : "", k2 && b ? b : "");
		i++;
	}
	if (json)
		printf("]");
	else if (i == 0)
		printf("  (none)\n");
	sqlite3_finalize(st);
}

int
cmd_report(struct moat_conf *c, int argc, char **argv)
{
	time_t since = time(NULL) - 86400;
	bool json = false;
	sqlite3 *db;
	sqlite3_stmt *st;
	static const char *actions[] = { "accept", "tag", "quarantine", "reject", "tempfail" };
	long long acts[5] = { 0 }, smtp_rej = 0, conns = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (!strcmp(argv[i], "--since") && i + 1 < argc) {
			if (!cli_parse_since(argv[++i], &since)) {
				fprintf(stderr, "moat: report: --since \"%s\": a duration (24h, 7d) or a date "
				    "(2026-11-23, \"2026-11-23 08:00\")\n", esc(argv[i]));
				return 2;
			}
		} else {
			fprintf(stderr, "usage: moat report [--since DURATION|DATE] [--json]\n");
			return 2;
		}
	}
	if ((db = cli_journal(c, "report")) == NULL)
		return 1;

	/* volume: one verdict per filtered message; without filters, the queued ones */
	if (sqlite3_prepare_v2(db, "SELECT action, count(*) FROM events WHERE ts >= ?1 AND "
	    "(type = 'verdict' OR (type = 'queued' AND action = 'accept')) GROUP BY action", -1, &st,
	    NULL) == SQLITE_OK) {
		sqlite3_bind_double(st, 1, (double)since);
		while (sqlite3_step(st) == SQLITE_ROW) {
			const char *a = (const char *)sqlite3_column_text(st, 0);
			for (size_t k = 0; a && k < ARRAY_SIZE(actions); k++)
				if (!strcmp(a, actions[k]))
					acts[k] += sqlite3_column_int64(st, 1);
		}
		sqlite3_finalize(st);
	}
	if (sqlite3_prepare_v2(db, "SELECT sum(type = 'reject'), sum(type = 'connect') FROM events "
	    "WHERE ts >= ?1", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_double(st, 1, (double)since);
		if (sqlite3_step(st) == SQLITE_ROW) {
			smtp_rej = sqlite3_column_int64(st, 0);
			conns = sqlite3_column_int64(st, 1);
		}
		sqlite3_finalize(st);
	}
	char from[64];
	struct tm tm;
	localtime_r(&since, &tm);
	strftime(from, sizeof(from), "%Y-%m-%d %H:%M:%S", &tm);
	if (json) {
		printf("{\"since\":%lld,\"connections\":%lld,\"smtp_rejects\":%lld,\"actions\":{",
		    (long long)since, conns, smtp_rej);
		for (size_t k = 0; k < ARRAY_SIZE(actions); k++)
			printf("%s\"%s\":%lld", k ? "," : "", actions[k], acts[k]);
		printf("}");
	} else {
		printf("moat report for %s since %s\n\nmessages by action:\n", c->hostname, from);
		for (size_t k = 0; k < ARRAY_SIZE(actions); k++)
			printf("  %8lld  %s\n", acts[k], actions[k]);
		printf("  %8lld  refused at SMTP (before DATA)\n  %8lld  connections\n", smtp_rej, conns);
	}

	top(db, "SELECT ip, count(*) AS n FROM events WHERE ts >= ?1 AND (type = 'verdict' OR "
	    "(type = 'queued' AND action = 'accept')) AND ip IS NOT NULL GROUP BY ip "
	    "ORDER BY n DESC, ip LIMIT ?2", since, json, "top sending IPs", "top_ips", "ip", NULL);
	top(db, "SELECT lower(CASE WHEN instr(sender, '@') > 0 THEN substr(sender, instr(sender, '@') + 1) "
	    "ELSE '<>' END) AS d, count(*) AS n FROM events WHERE ts >= ?1 AND (type = 'verdict' OR "
	    "(type = 'queued' AND action = 'accept')) GROUP BY d ORDER BY n DESC, d LIMIT ?2", since,
	    json, "top sender domains", "top_sender_domains", "domain", NULL);
	top(db, "SELECT ip, CASE WHEN type = 'reject' THEN action ELSE 'data (filters)' END AS stage, "
	    "count(*) AS n FROM events WHERE ts >= ?1 AND (type = 'reject' OR (type = 'verdict' AND "
	    "action = 'reject')) GROUP BY ip, stage ORDER BY n DESC, ip LIMIT ?2", since, json,
	    "top rejected (client, stage)", "top_rejected", "ip", "stage");

	/* symbols: split in C */
	struct count *sv = NULL;
	size_t ns = 0;
	if (sqlite3_prepare_v2(db, "SELECT symbols FROM events WHERE ts >= ?1 AND type = 'verdict' "
	    "AND symbols IS NOT NULL", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_double(st, 1, (double)since);
		while (sqlite3_step(st) == SQLITE_ROW)
			count_symbols(&sv, &ns, (const char *)sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
	}
	qsort(sv, ns, sizeof(*sv), cmp_count);
	printf(json ? ",\"top_symbols\":[" : "\ntop symbols:\n");
	for (size_t i = 0; i < ns && i < TOP; i++) {
		if (json) {
			printf("%s{\"symbol\":", i ? "," : "");
			print_json_str(sv[i].key);
			printf(",\"count\":%lld}", sv[i].n);
		} else
			printf("  %8lld  %s\n", sv[i].n, sv[i].key);
	}
	if (json)
		printf("]");
	else if (ns == 0)
		printf("  (none)\n");
	for (size_t i = 0; i < ns; i++)
		free(sv[i].key);
	free(sv);

	/* delivery per destination: attempts by result, success = delivered / final outcomes */
	if (sqlite3_prepare_v2(db, "SELECT dest, sum(type = 'delivered'), sum(type = 'deferred'), "
	    "sum(type = 'bounced'), sum(type = 'expired') FROM events WHERE ts >= ?1 AND type IN "
	    "('delivered','deferred','bounced','expired') GROUP BY dest ORDER BY count(*) DESC, dest",
	    -1, &st, NULL) == SQLITE_OK) {
		int i = 0;
		sqlite3_bind_double(st, 1, (double)since);
		printf(json ? ",\"destinations\":[" : "\ndelivery by destination:\n"
		    "  %-40s %9s %9s %9s %9s %8s\n", "destination", "delivered", "deferred", "bounced",
		    "expired", "success");
		while (sqlite3_step(st) == SQLITE_ROW) {
			const char *d = (const char *)sqlite3_column_text(st, 0);
			long long dl = sqlite3_column_int64(st, 1), df = sqlite3_column_int64(st, 2);
			long long bo = sqlite3_column_int64(st, 3), ex = sqlite3_column_int64(st, 4);
			double rate = dl + bo + ex ? 100.0 * (double)dl / (double)(dl + bo + ex) : 0;
			if (json) {
				printf("%s{\"destination\":", i ? "," : "");
				print_json_str(d);
				printf(",\"delivered\":%lld,\"deferred\":%lld,\"bounced\":%lld,\"expired\":%lld,"
				    "\"success_rate\":%.1f}", dl, df, bo, ex, rate);
			} else
				printf("  %-40s %9lld %9lld %9lld %9lld %7.1f%%\n", d ? d : "-", dl, df, bo, ex,
				    rate);
			i++;
		}
		if (json)
			printf("]");
		else if (i == 0)
			printf("  (none)\n");
		sqlite3_finalize(st);
	}
	if (json)
		printf("}\n");
	sqlite3_close(db);
	return 0;
}
