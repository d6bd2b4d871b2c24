/*
 * test_journal - lib/journal.c: hooks -> batch -> journal.db and log-json
 * (the synchronous last flush of journal_stop), the Message-ID scan
 * (folded, absent, hostile bytes), bounded fields, the metrics the hooks
 * bump.
 */
#include "config.h"
#include "buf.h"
#include "conf.h"
#include "engine.h"
#include "journal.h"
#include "metrics.h"
#include "pool.h"
#include "spool.h"
#include "t.h"
#include "util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <sqlite3.h>

static sqlite3 *db;

static char *
one(const char *sql)
{
	sqlite3_stmt *st;
	char *r = NULL;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return xstrdup(sqlite3_errmsg(db));
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		r = xstrdup((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return r ? r : xstrdup("(null)");
}

static void
check(const char *sql, const char *want, const char *desc)
{
	char *got = one(sql);
	is_str(got, want, "%s", desc);
	free(got);
}

int
main(void)
{
	char dir[] = "/tmp/moat-test-journal-XXXXXX", path[PATH_MAX + 32];
	struct buf text = BUF_INIT, errs = BUF_INIT;
	struct moat_conf *c;
	struct event_base *base;
	struct pool *pool;
	struct envelope env;
	struct verdict v;
	struct symbol syms[2];
	char big[3000];

	if (mkdtemp(dir) == NULL)
		return 1;
	buf_printf(&text, "state-dir %s\nlog-json %s/events.json\ndomain ours.test deliver store\n",
	    dir, dir);
	c = conf_load_string("t.conf", text.data, &errs);
	ok(c != NULL, "config %s", errs.data ? errs.data : "");
	if (c == NULL)
		return t_done();
	base = event_base_new();
	pool = pool_new(base, 1);
	journal_open_json(c);
	journal_start(base, pool, c);

	journal_connect("S1", "192.0.2.1", "127.0.0.1:25");
	memset(&env, 0, sizeof(env));
	moat_strlcpy(env.qid, "Q1", sizeof(env.qid));
	env.sender = xstrdup("a@b.example");
	envelope_add_rcpt(&env, "x@ours.test", NULL, 0);
	envelope_add_rcpt(&env, "y@elsewhere.test", NULL, 0);
	envelope_add_rcpt(&env, "z@ours.test", NULL, 0);
	journal_message_id("Q1", "Subject: x\r\nMessage-ID:\r\n <folded@id.test>\r\n\r\n"
	    "Message-ID: <no@body>\r\n", 60);
	journal_message_id("Q2", "Subject: x\r\n\r\nMessage-ID: <in@body>\r\n", 36);
	journal_message_id("Q3", "message-id: <a\x01\xff@b>\r\n\r\n", 20);
	memset(&v, 0, sizeof(v));
	memset(syms, 0, sizeof(syms));
	moat_strlcpy(syms[0].name, "RULE_A", sizeof(syms[0].name));
	syms[0].score = 2.5;
	moat_strlcpy(syms[1].name, "RULE_B", sizeof(syms[1].name));
	syms[1].score = 1;
	v.sym = syms;
	v.nsym = 2;
	v.score = 3.5;
	v.action = VA_TAG;
	v.elapsed_ms = 12;
	journal_verdict("S1", "192.0.2.1", &env, &v);
	journal_queued("S1", "192.0.2.1", &env, 1234, false);
	journal_delivery("Q1", "deferred", "x@ours.test", "store", 1, "451 4.3.0 \"later\"\nnow");
	memset(big, 'A', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	journal_delivery("Q1", "delivered", "x@ours.test", "store", 2, big);
	journal_removed("Q1");
	journal_stop();         /* writes what is left, synchronously */
	pool_free(pool);
	event_base_free(base);

	is_int(metric_sum(M_MESSAGES, "tag", NULL), 1, "metrics: one tag");
	is_int(metric_sum(M_MESSAGES_DOMAIN, "ours.test", "tag"), 1,
	    "metrics: one count per domain per message (two rcpts of ours.test)");
	is_int(metric_sum(M_MESSAGES_DOMAIN, "other", "tag"), 1, "metrics: another domain is \"other\"");
	is_int(metric_sum(M_SYMBOLS, "RULE_A", NULL), 1, "metrics: symbol hit");
	is_int(metric_sum(M_DELIVERY, "store", NULL), 2, "metrics: two attempts to store");
	is_int(metric_sum(M_SESSIONS_OPEN, "127.0.0.1:25", NULL), 1, "metrics: one session open");

	snprintf(path, sizeof(path), "%s/journal.db", dir);
	ok(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "journal.db exists");
	check("SELECT group_concat(type, ' ') FROM (SELECT type FROM events ORDER BY id)",
	    "connect message message verdict queued deferred delivered removed",
	    "every event, in order");
	check("SELECT msgid FROM events WHERE qid = 'Q1' AND type = 'message'", "<folded@id.test>",
	    "a folded Message-ID");
	check("SELECT msgid FROM events WHERE qid = 'Q2'", "(null)",
	    "a Message-ID in the body is not one (no event)");
	check("SELECT msgid FROM events WHERE qid = 'Q3'", "<a??@b>",
	    "control and 8-bit bytes replaced");
	check("SELECT rcpt || ' ' || action || ' ' || score || ' ' || symbols FROM events "
	    "WHERE type = 'verdict'", "<x@ours.test>,<y@elsewhere.test>,<z@ours.test> tag 3.5 "
	    "RULE_A(2.50),RULE_B(1.00)", "the verdict row");
	check("SELECT length(detail) FROM events WHERE type = 'delivered'", "1000",
	    "fields are bounded");
	check("SELECT detail FROM events WHERE type = 'queued'", "size=1234", "queued size");
	sqlite3_close(db);

	snprintf(path, sizeof(path), "%s/events.json", dir);
	FILE *f = fopen(path, "r");
	char line[4096];
	int n = 0, good = 0;
	while (f && fgets(line, sizeof(line), f)) {
		n++;
		good += line[0] == '{' && strstr(line, "}\n") != NULL && strstr(line, "\"host\":") != NULL;
		if (strstr(line, "\"type\":\"deferred\""))
			ok(strstr(line, "\"detail\":\"451 4.3.0 \\\"later\\\"\\u000anow\"") != NULL,
			    "log-json escapes quotes and newlines");
	}
	if (f)
		fclose(f);
	is_int(n, 8, "log-json: one line per event");
	is_int(good, 8, "log-json: each line an object");

	envelope_clear(&env);
	conf_free(c);
	buf_free(&text);
	buf_free(&errs);
	snprintf(path, sizeof(path), "rm -rf '%s'", dir);
	if (system(path) != 0)
		ok(0, "cleanup");
	return t_done();
}
