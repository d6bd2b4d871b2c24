/*
 * cmd_trace.c - `moat trace [--json] QUEUEID|MESSAGE-ID|ADDRESS`: every
 * event of a message from the event journal, in order: the connection,
 * the verdict, queueing, each delivery attempt (deferred with the reason,
 * delivered, bounced), the DSN, removal.  An address matches the messages
 * it sent or received (the newest 20).
 */
#include "config.h"
#include "cli.h"
#include "buf.h"
#include "conf.h"
#include "journal.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#define MAX_MESSAGES 20

static void
jstr(const char *s)
{
	struct buf b = BUF_INIT;
	json_str(&b, s ? s : "");
	fwrite(b.data, 1, b.len, stdout);
	buf_free(&b);
}

/* a terminal-safe copy */
static const char *
safe(const char *s, char *out, size_t outsz)
{
	size_t o = 0;
	for (; s && *s && o + 1 < outsz; s++)
		out[o++] = ((unsigned char)*s >= 0x20 && *s != 0x7f) ? *s : '?';
	out[o] = '\0';
	return out;
}

int
cmd_trace(struct moat_conf *c, int argc, char **argv)
{
	bool json = false;
	const char *arg = NULL;
	sqlite3 *db;
	sqlite3_stmt *st;
	struct buf addr = BUF_INIT, mid = BUF_INIT;
	int nev = 0;

	bool bad = false;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json"))
			json = true;
		else if (arg == NULL && argv[i][0] != '-')
			arg = argv[i];
		else
			bad = true;
	}
	if (arg == NULL || bad || strlen(arg) > 998) {
		fprintf(stderr, "usage: moat trace [--json] QUEUEID|MESSAGE-ID|ADDRESS\n");
		return 2;
	}
	if ((db = cli_journal(c, "trace")) == NULL)
		return 1;
	/* the address as the journal writes it ("<a@b>" in rcpt lists), the
	 * Message-ID with and without its angle brackets */
	const char *bare = arg[0] == '<' ? arg + 1 : arg;
	size_t blen = strlen(bare);
	if (blen && bare[blen - 1] == '>')
		blen--;
	buf_printf(&addr, "<%.*s>", (int)blen, bare);
	buf_printf(&mid, "<%.*s>", (int)blen, bare);

	static const char sql[] =
	    "WITH q(qid) AS ("
	    "  SELECT ?1 UNION"
	    "  SELECT qid FROM events WHERE qid IS NOT NULL AND (msgid = ?2 OR msgid = ?3)"
	    "  UNION SELECT qid FROM (SELECT qid, max(ts) AS t FROM events WHERE qid IS NOT NULL AND"
	    "    (type IN ('verdict','queued','quarantined') AND (lower(sender) = lower(?3) OR"
	    "     instr(lower(rcpt), lower(?4)) > 0)) GROUP BY qid ORDER BY t DESC LIMIT ?5)),"
	    " s(sid) AS (SELECT DISTINCT sid FROM events WHERE sid IS NOT NULL AND qid IN q)"
	    " SELECT ts, type, sid, qid, msgid, ip, sender, rcpt, action, score, symbols, dest,"
	    "  attempts, detail FROM events WHERE qid IN q OR (qid IS NULL AND type = 'connect' AND"
	    "  sid IN s) ORDER BY ts, id";
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "moat: trace: %s\n", sqlite3_errmsg(db));
		sqlite3_close(db);
		return 1;
	}
	sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, mid.data, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, bare, (int)blen, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, addr.data, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 5, MAX_MESSAGES);
	if (json)
		printf("[");
	while (sqlite3_step(st) == SQLITE_ROW) {
		static const char *cols[] = { "ts", "type", "sid", "qid", "msgid", "ip", "sender", "rcpt",
		    "action", "score", "symbols", "dest", "attempts", "detail" };
		double ts = sqlite3_column_double(st, 0);
		time_t t = (time_t)ts;
		struct tm tm;
		char when[64], tmp[1100];

		localtime_r(&t, &tm);
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
		if (json) {
			printf("%s{\"time\":%.3f", nev ? "," : "", ts);
			for (int k = 1; k < 14; k++) {
				if (sqlite3_column_type(st, k) == SQLITE_NULL)
					continue;
				printf(",\"%s\":", cols[k]);
				if (k == 9)
					printf("%.2f", sqlite3_column_double(st, k));
				else if (k == 12)
					printf("%d", sqlite3_column_int(st, k));
				else
					jstr((const char *)sqlite3_column_text(st, k));
			}
			printf("}");
		} else {
			printf("%s.%03d %-12s", when, (int)((ts - (double)t) * 1000),
			    (const char *)sqlite3_column_text(st, 1));
			for (int k = 2; k < 14; k++) {
				if (sqlite3_column_type(st, k) == SQLITE_NULL)
					continue;
				if (k == 9)
					printf(" score=%.2f", sqlite3_column_double(st, k));
				else if (k == 12)
					printf(" attempts=%d", sqlite3_column_int(st, k));
				else if (k == 13) {
					const char *d = safe((const char *)sqlite3_column_text(st, k), tmp,
					    sizeof(tmp));
					if (strchr(d, ' ') || !strchr(d, '='))
						printf(" \"%s\"", d);
					else
						printf(" %s", d);
				}
				else
					printf(" %s=%s", cols[k], safe((const char *)sqlite3_column_text(st, k),
					    tmp, sizeof(tmp)));
			}
			printf("\n");
		}
		nev++;
	}
	if (json)
		printf("]\n");
	sqlite3_finalize(st);
	sqlite3_close(db);
	buf_free(&addr);
	buf_free(&mid);
	if (nev == 0) {
		fprintf(stderr, "moat: trace: nothing in the journal for \"%s\"\n", esc(arg));
		return 1;
	}
	return 0;
}
