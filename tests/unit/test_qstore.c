/*
 * test_qstore.c - the quarantine store: put from a committed spool file and
 * from memory, list filters, release (original envelope, X-Moat-Released,
 * exactly once, one recipient), delete, purge by age and size, crash
 * repairs (orphans made by hand, interrupted releases), RFC 2047 decoding,
 * the digest, and a --rcpt lookup among 100,000 index entries (< 1 s).
 */
#include "config.h"
#include "t.h"
#include "buf.h"
#include "conf.h"
#include "qstore.h"
#include "spool.h"
#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char statedir[512];

static void
mkenv(struct envelope *e, const char *sender, const char *r1, const char *r2)
{
	memset(e, 0, sizeof(*e));
	spool_new_qid(e->qid);
	e->arrival = time(NULL);
	e->sender = xstrdup(sender);
	e->envid = xstrdup("ENV1");
	e->ret = DSN_RET_HDRS;
	e->client_addr = xstrdup("192.0.2.7");
	e->helo = xstrdup("spammer.example");
	e->proto = xstrdup("ESMTP");
	envelope_add_rcpt(e, r1, "rfc822;x@example.net", DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY);
	if (r2)
		envelope_add_rcpt(e, r2, NULL, 0);
}

/* a committed spool file, as the SMTP session leaves it */
static void
spool_msg(struct envelope *e, const char *msg)
{
	char *err = NULL;
	struct spool_writer *w = spool_begin(e, "Received: from test\r\n", &err);
	spool_write(w, msg, strlen(msg));
	if (spool_commit(w, &err) != 0)
		printf("# commit: %s\n", err);
	spool_writer_free(w);
}

static int
count_dir(const char *sub)
{
	char p[1024];
	DIR *d;
	struct dirent *de;
	int n = 0;

	snprintf(p, sizeof(p), "%s/%s", statedir, sub);
	if ((d = opendir(p)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static int
collect(const struct qstore_entry *en, void *arg)
{
	struct buf *b = arg;
	buf_printf(b, "%s,", en->id);
	return 0;
}

static long
nlist(struct qstore *qs, const struct qfilter *f)
{
	struct buf b = BUF_INIT;
	long n = qstore_list(qs, f, collect, &b);
	buf_free(&b);
	return n;
}

/* the only queue file (other than `except`); its message text */
static int
queue_files(char names[][32], int max)
{
	char p[1024];
	DIR *d;
	struct dirent *de;
	int n = 0;

	snprintf(p, sizeof(p), "%s/spool/queue", statedir);
	if ((d = opendir(p)) == NULL)
		return 0;
	while ((de = readdir(d)) != NULL)
		if (spool_valid_qid(de->d_name) && n < max)
			moat_strlcpy(names[n++], de->d_name, 32);
	closedir(d);
	return n;
}

static char *
queue_text(const char *qid, struct envelope *e)
{
	char *err = NULL, p[1024];
	int fd;

	if (spool_read_envelope(qid, e, &err) < 0) {
		printf("# %s\n", err);
		free(err);
		return NULL;
	}
	spool_queue_path(qid, p, sizeof(p));
	fd = open(p, O_RDONLY);
	char *m = xmalloc((size_t)e->data_len + 1);
	ssize_t n = pread(fd, m, (size_t)e->data_len, e->data_off);
	close(fd);
	m[n < 0 ? 0 : n] = '\0';
	return m;
}

static void
clear_queue(void)
{
	char names[16][32];
	int n = queue_files(names, 16);
	for (int i = 0; i < n; i++)
		spool_remove(names[i]);
}

int
main(void)
{
	char tmpl[] = "/tmp/moat-qstore-XXXXXX";
	char *dir = mkdtemp(tmpl);
	struct buf errs = BUF_INIT, text = BUF_INIT;
	struct moat_conf *c;
	struct qstore *qs;
	char *err = NULL;
	struct qstore_entry en;
	struct qfilter f;
	char out[256];

	/* ---- RFC 2047 ---- */
	qstore_decode_2047("=?UTF-8?B?SGVsbG8gV8O2cmxk?=", 28, out, sizeof(out));
	is_str(out, "Hello Wörld", "2047: B, UTF-8");
	const char *q = "=?iso-8859-1?Q?caf=E9_au?= =?iso-8859-1?Q?_lait?= now";
	qstore_decode_2047(q, strlen(q), out, sizeof(out));
	is_str(out, "café au lait now", "2047: Q, Latin-1, blank between words dropped");
	q = "plain =?koi8-r?B?8NLJ?= x";
	qstore_decode_2047(q, strlen(q), out, sizeof(out));
	is_str(out, "plain =?koi8-r?B?8NLJ?= x", "2047: unknown charset kept as written");
	q = "a\x01\x1b[31mb";
	qstore_decode_2047(q, strlen(q), out, sizeof(out));
	is_str(out, "a??[31mb", "control characters replaced");
	q = "raw caf\xe9 and ok \xc3\xa9 and bad \xc3(";
	qstore_decode_2047(q, strlen(q), out, sizeof(out));
	is_str(out, "raw caf\xc3\xa9 and ok \xc3\xa9 and bad \xc3\x83(", "8-bit header bytes: UTF-8 kept, others as Latin-1");
	qstore_decode_2047("=?UTF-8?B?w7bDtsO2?=", 20, out, 4);
	is_str(out, "\xc3\xb6", "truncation keeps whole UTF-8 characters");

	snprintf(statedir, sizeof(statedir), "%s/state", dir);
	buf_printf(&text, "state-dir %s\n", statedir);
	c = conf_load_string("t", text.data, &errs);
	ok(c != NULL, "config");
	ok(spool_init(c, &err) == 0, "spool_init");
	qs = qstore_open(statedir, &err);
	ok(qs != NULL, "qstore_open");

	/* ---- put from a committed spool file ---- */
	struct envelope e1, e2, e3;
	mkenv(&e1, "spammer@bad.example", "Alice@Example.net", "bob@example.net");
	spool_msg(&e1, "From: =?UTF-8?B?U3DDpG1tZXI=?= <spammer@bad.example>\r\n"
	    "Subject: =?UTF-8?Q?Cheap_p=C3=AFlls?=\r\n\tnow\r\n\r\nBuy now.\r\n");
	struct qstore_verdict v = { 12.5, "quarantine", "BAYES_99(5),RULE_PILLS(7.5)" };
	ok(qstore_put_from_spool(qs, e1.qid, &v) == 0, "put_from_spool: %s", qstore_error(qs));
	is_int(count_dir("spool/queue"), 0, "the spool file left the queue");
	is_int(count_dir("quarantine/msg"), 1, "one file in quarantine/msg (two recipients, stored once)");
	ok(qstore_get(qs, e1.qid, &en) == 0, "get");
	is_str(en.sender, "spammer@bad.example", "index: sender");
	is_str(en.hfrom, "Spämmer <spammer@bad.example>", "index: From decoded");
	is_str(en.subject, "Cheap pïlls now", "index: Subject decoded and unfolded");
	is_int(en.nrcpts, 2, "index: two recipients");
	is_str(en.client, "192.0.2.7", "index: client");
	ok(en.score > 12.4 && en.score < 12.6, "index: score");
	is_str(en.symbols, "BAYES_99(5),RULE_PILLS(7.5)", "index: symbols");
	is_int(en.state, QS_HELD, "index: held");
	qstore_entry_clear(&en);

	/* ---- put from memory ---- */
	mkenv(&e2, "newsletter@shop.example", "carol@example.net", NULL);
	e2.arrival = time(NULL) - 3600;
	const char *m2 = "From: Shop <newsletter@shop.example>\r\nSubject: Sale\r\n\r\nSale!\r\n";
	struct qstore_verdict v2 = { 6.1, NULL, "URIBL(6.1)" };
	ok(qstore_put_buf(qs, &e2, m2, strlen(m2), &v2) == 0, "put_buf: %s", qstore_error(qs));
	mkenv(&e3, "", "alice@example.net", NULL);
	e3.arrival = time(NULL) - 7200;
	const char *m3 = "Subject: bounce\r\n\r\nx\r\n";
	ok(qstore_put_buf(qs, &e3, m3, strlen(m3), NULL) == 0, "put_buf without verdict");
	is_int(count_dir("spool/queue"), 0, "put_buf: never through the delivery queue");
	is_int(count_dir("spool/incoming"), 0, "put_buf: nothing left in spool/incoming");
	is_int(count_dir("quarantine/msg"), 3, "put_buf: in quarantine/msg");

	/* ---- list filters ---- */
	memset(&f, 0, sizeof(f));
	is_int(nlist(qs, &f), 3, "list: all");
	f.rcpt = "ALICE@example.NET";
	is_int(nlist(qs, &f), 2, "list --rcpt (case-insensitive)");
	f.rcpt = NULL;
	f.from = "shop.example";
	is_int(nlist(qs, &f), 1, "list --from");
	f.from = "spämmer";
	is_int(nlist(qs, &f), 1, "list --from: decoded From, non-ASCII as written");
	f.from = NULL;
	f.has_min_score = true;
	f.min_score = 10;
	is_int(nlist(qs, &f), 1, "list --min-score");
	f.has_min_score = false;
	f.symbol = "URIBL";
	is_int(nlist(qs, &f), 1, "list --symbol");
	f.symbol = NULL;
	f.since = time(NULL) - 5400;
	is_int(nlist(qs, &f), 2, "list --since");
	f.since = 0;
	f.until = time(NULL) - 5400;
	is_int(nlist(qs, &f), 1, "list --until");
	f.until = 0;
	f.limit = 1;
	struct buf ids = BUF_INIT;
	qstore_list(qs, &f, collect, &ids);
	ok(ids.len && strncmp(ids.data, e1.qid, 18) == 0, "list: newest first, --limit 1");
	buf_free(&ids);
	f.limit = 0;

	/* ---- release one recipient ---- */
	char nq[24];
	ok(qstore_release(qs, e1.qid, "BOB@example.net", "admin", 0, nq) == 0, "release --rcpt: %s",
	    qstore_error(qs));
	char names[16][32];
	is_int(queue_files(names, 16), 1, "release --rcpt: one queue file");
	struct envelope r;
	char *txt = queue_text(names[0], &r);
	is_str(names[0], nq, "the new queue id is reported");
	is_int(r.nrcpts, 1, "release --rcpt: only that recipient");
	is_str(r.nrcpts ? r.rcpts[0].addr : "", "bob@example.net", "release --rcpt: bob");
	is_str(r.sender, "spammer@bad.example", "release: original sender");
	is_str(r.envid, "ENV1", "release: original ENVID");
	is_int(r.ret, DSN_RET_HDRS, "release: original RET");
	ok(txt && strncmp(txt, "X-Moat-Released: ", 17) == 0 && strstr(txt, " by admin\r\nReceived: from test\r\n"),
	    "release: X-Moat-Released prepended to the original message");
	ok(txt && strstr(txt, "Buy now.\r\n") != NULL, "release: body intact");
	free(txt);
	envelope_clear(&r);
	clear_queue();
	ok(qstore_get(qs, e1.qid, &en) == 0 && en.state == QS_HELD, "still held for alice");
	qstore_entry_clear(&en);
	is_int(qstore_release(qs, e1.qid, "bob@example.net", "admin", 0, NULL), 1,
	    "releasing bob again: nothing to do");
	is_int(count_dir("spool/queue"), 0, "no second injection");

	/* release the rest: alice only (bob already released), with ORCPT/NOTIFY */
	ok(qstore_release(qs, e1.qid, NULL, "root", 0, nq) == 0, "release all");
	is_int(queue_files(names, 16), 1, "one queue file");
	txt = queue_text(names[0], &r);
	is_int(r.nrcpts, 1, "the remaining recipient only");
	is_str(r.nrcpts ? r.rcpts[0].addr : "", "Alice@Example.net", "as written in the envelope");
	is_str(r.nrcpts ? r.rcpts[0].orcpt : "", "rfc822;x@example.net", "original ORCPT");
	is_int(r.nrcpts ? r.rcpts[0].notify : 0, DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY, "original NOTIFY");
	free(txt);
	envelope_clear(&r);
	clear_queue();
	ok(qstore_get(qs, e1.qid, &en) == 0 && en.state == QS_RELEASED, "state released");
	is_str(en.state_by, "root", "released by");
	qstore_entry_clear(&en);
	is_int(qstore_release(qs, e1.qid, NULL, "root", 0, NULL), 1, "release twice: refused");
	is_int(count_dir("spool/queue"), 0, "exactly once");
	memset(&f, 0, sizeof(f));
	is_int(nlist(qs, &f), 2, "list: released messages are no longer listed");
	f.all_states = true;
	is_int(nlist(qs, &f), 3, "list (all states) shows it");

	/* the verdict's added headers (spool trailer) travel with a release */
	{
		struct envelope eh;
		mkenv(&eh, "hdr@example.org", "gina@example.net", NULL);
		struct spool_writer *w = spool_begin(&eh, NULL, &err);
		const char *body = "Subject: with headers\r\n\r\nbody\r\n";
		const char *xh = "X-Spam-Flag: YES\r\nX-Spam-Score: 9.9\r\n";
		spool_write(w, body, strlen(body));
		spool_set_headers(w, xh, strlen(xh));
		ok(spool_commit(w, &err) == 0, "spool file with added headers");
		spool_writer_free(w);
		ok(qstore_put_from_spool(qs, eh.qid, &v) == 0, "quarantined");
		ok(qstore_get(qs, eh.qid, &en) == 0, "indexed");
		is_str(en.subject, "with headers", "subject from the message");
		qstore_entry_clear(&en);
		ok(qstore_release(qs, eh.qid, NULL, "admin", 0, nq) == 0, "released");
		txt = queue_text(nq, &r);
		char *p1 = txt ? strstr(txt, "X-Spam-Flag: YES\r\nX-Spam-Score: 9.9\r\nSubject: with headers") : NULL;
		ok(txt && strncmp(txt, "X-Moat-Released: ", 17) == 0 && p1 != NULL,
		    "release: X-Moat-Released, then the added headers, then the message");
		free(txt);
		envelope_clear(&r);
		envelope_clear(&eh);
		clear_queue();
	}

	/* ---- delete ---- */
	ok(qstore_delete(qs, e2.qid, "admin") == 0, "delete");
	is_int(qstore_delete(qs, e2.qid, "admin"), 1, "delete twice: nothing");
	ok(qstore_get(qs, e2.qid, &en) == 0 && en.state == QS_DELETED, "state deleted");
	qstore_entry_clear(&en);
	is_int(count_dir("quarantine/msg"), 3, "the deleted file is gone (the released ones stay until purged)");
	is_int(qstore_release(qs, e2.qid, NULL, "x", 0, NULL), 1, "a deleted message cannot be released");
	is_int(qstore_release(qs, "0123456789ABCDEF01", NULL, "x", 0, NULL), 1, "unknown id");

	/* ---- crash repairs ---- */
	/* a file without a row (crash between the fsync and the insert) */
	struct envelope e4;
	mkenv(&e4, "orphan@example.org", "dave@example.net", NULL);
	spool_msg(&e4, "Subject: orphan\r\n\r\nx\r\n");
	char from[1024], to[1024];
	spool_queue_path(e4.qid, from, sizeof(from));
	snprintf(to, sizeof(to), "%s/quarantine/msg/%s", statedir, e4.qid);
	ok(rename(from, to) == 0, "orphan file made by hand");
	/* a row without a file */
	snprintf(to, sizeof(to), "%s/quarantine/msg/%s", statedir, e3.qid);
	unlink(to);
	long fixed = qstore_check(qs);
	is_int(fixed, 2, "check: two repairs");
	ok(qstore_get(qs, e4.qid, &en) == 0 && en.state == QS_HELD, "orphan file re-indexed");
	is_str(en.subject, "orphan", "re-indexed from the file: subject");
	is_str(en.nrcpts ? en.rcpts[0] : "", "dave@example.net", "re-indexed from the file: rcpt");
	qstore_entry_clear(&en);
	ok(qstore_get(qs, e3.qid, &en) == 0 && en.state == QS_LOST, "row without file: lost");
	qstore_entry_clear(&en);
	is_int(qstore_check(qs), 0, "check again: nothing to do");

	/* an interrupted release: 'releasing' with no queue file → rolled back;
	 * with the queue file → finished */
	sqlite3 *db;
	char dbp[1024];
	snprintf(dbp, sizeof(dbp), "%s/quarantine/index.db", statedir);
	ok(sqlite3_open(dbp, &db) == SQLITE_OK, "open the index by hand");
	char sql[512];
	snprintf(sql, sizeof(sql), "UPDATE rcpt SET state='releasing', release_qid='00000000000000A001'"
	    " WHERE id='%s'; UPDATE msg SET state='releasing' WHERE id='%s';", e4.qid, e4.qid);
	ok(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK, "simulate a crash after 'releasing'");
	qstore_close(&qs);
	qs = qstore_open(statedir, &err);
	ok(qstore_get(qs, e4.qid, &en) == 0 && en.state == QS_HELD, "no queue file: rolled back to held");
	qstore_entry_clear(&en);
	is_int(count_dir("spool/queue"), 0, "nothing injected by the roll-back");
	ok(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK, "simulate a crash after the injection");
	/* the injected file exists under the recorded id */
	struct envelope e5;
	mkenv(&e5, "orphan@example.org", "dave@example.net", NULL);
	moat_strlcpy(e5.qid, "00000000000000A001", sizeof(e5.qid));
	spool_msg(&e5, "X-Moat-Released: x\r\n\r\n");
	qstore_close(&qs);
	qs = qstore_open(statedir, &err);
	ok(qstore_get(qs, e4.qid, &en) == 0 && en.state == QS_RELEASED, "queue file found: finished as released");
	qstore_entry_clear(&en);
	is_int(count_dir("spool/queue"), 1, "and not injected a second time");
	is_int(qstore_release(qs, e4.qid, NULL, "x", 0, NULL), 1, "cannot be released again");
	clear_queue();
	/* a deleted row whose file survived (crash before the unlink) */
	struct envelope e6;
	mkenv(&e6, "del@example.org", "erin@example.net", NULL);
	const char *m6 = "Subject: del\r\n\r\nx\r\n";
	qstore_put_buf(qs, &e6, m6, strlen(m6), NULL);
	snprintf(sql, sizeof(sql), "UPDATE msg SET state='deleted' WHERE id='%s'", e6.qid);
	sqlite3_exec(db, sql, NULL, NULL, NULL);
	is_int(qstore_check(qs), 1, "check: the deleted message's file is removed");
	snprintf(to, sizeof(to), "%s/quarantine/msg/%s", statedir, e6.qid);
	ok(access(to, F_OK) < 0, "file gone");

	/* ---- digest ---- */
	struct buf dg = BUF_INIT;
	is_int(qstore_digest_build(qs, "dave@example.net", 0, "postmaster@example.net", &dg), 0,
	    "digest: dave's message was released");
	buf_reset(&dg);
	struct envelope e7;
	mkenv(&e7, "x@bad.example", "dave@example.net", NULL);
	const char *m7 = "From: Bad <x@bad.example>\r\nSubject: =?UTF-8?Q?W=C3=A4tch?=\r\n\r\nx\r\n";
	qstore_put_buf(qs, &e7, m7, strlen(m7), &v);
	is_int(qstore_digest_build(qs, "dave@example.net", 0, "postmaster@example.net", &dg), 1,
	    "digest: one held message");
	buf_addc(&dg, '\0');
	ok(strstr(dg.data, "To: <dave@example.net>\r\n") && strstr(dg.data, e7.qid) &&
	    strstr(dg.data, "Subject: Wätch") && strstr(dg.data, "\r\n\r\n"), "digest text");
	buf_free(&dg);

	/* ---- purge ---- */
	snprintf(sql, sizeof(sql), "UPDATE msg SET time = time - 40*86400 WHERE id='%s'", e7.qid);
	sqlite3_exec(db, sql, NULL, NULL, NULL);
	int before = count_dir("quarantine/msg");
	is_int(qstore_purge(qs, 30 * 86400, 0), 1, "purge by age: one");
	is_int(count_dir("quarantine/msg"), before - 1, "its file is gone");
	ok(qstore_get(qs, e7.qid, &en) == 1, "and its row");
	qstore_entry_clear(&en);
	/* size: three more 10 KB messages, cap 15 KB → the two oldest go */
	char big[10000];
	memset(big, 'a', sizeof(big));
	memcpy(big, "Subject: big\r\n\r\n", 16);
	big[sizeof(big) - 1] = '\0';
	struct envelope eb[3];
	for (int i = 0; i < 3; i++) {
		mkenv(&eb[i], "big@example.org", "frank@example.net", NULL);
		eb[i].arrival = time(NULL) - 100 + i;
		qstore_put_buf(qs, &eb[i], big, strlen(big), NULL);
	}
	long np = qstore_purge(qs, 0, 15000);
	is_int(np, 2, "purge by size: the two oldest files");
	ok(qstore_get(qs, eb[2].qid, &en) == 0, "the newest big message stays");
	qstore_entry_clear(&en);
	ok(qstore_get(qs, eb[0].qid, &en) == 1, "the oldest big message went");
	qstore_entry_clear(&en);

	/* ---- 100,000 entries, --rcpt ---- */
	sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
	sqlite3_stmt *im, *ir;
	sqlite3_prepare_v2(db, "INSERT INTO msg (id, time, sender, hfrom, subject, size, score, symbols)"
	    " VALUES (?, ?, 'bulk@spam.example', 'Bulk', 'offer', 1000, 7.0, 'X(7)')", -1, &im, NULL);
	sqlite3_prepare_v2(db, "INSERT INTO rcpt (id, addr, laddr) VALUES (?, ?, ?)", -1, &ir, NULL);
	time_t base = time(NULL) - 86400;
	for (int i = 0; i < 100000; i++) {
		char id[24], a[64];
		snprintf(id, sizeof(id), "%018llX", 0xB00000000ULL + (unsigned long long)i);
		sqlite3_bind_text(im, 1, id, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(im, 2, base + i / 10);
		sqlite3_step(im);
		sqlite3_reset(im);
		for (int k = 0; k < 2; k++) {
			snprintf(a, sizeof(a), "user%d@example.net", (i * 7 + k * 13) % 5000);
			sqlite3_bind_text(ir, 1, id, -1, SQLITE_TRANSIENT);
			sqlite3_bind_text(ir, 2, a, -1, SQLITE_TRANSIENT);
			sqlite3_bind_text(ir, 3, a, -1, SQLITE_TRANSIENT);
			sqlite3_step(ir);
			sqlite3_reset(ir);
		}
	}
	sqlite3_finalize(im);
	sqlite3_finalize(ir);
	ok(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK, "100,000 index entries");
	memset(&f, 0, sizeof(f));
	f.rcpt = "User123@example.net";
	uint64_t t0 = now_ms();
	long nr = nlist(qs, &f);
	uint64_t t1 = now_ms();
	ok(nr >= 20, "--rcpt among 100,000: %ld found", nr);
	ok(t1 - t0 < 1000, "--rcpt among 100,000 answered in %llu ms (< 1000)", (unsigned long long)(t1 - t0));
	printf("# list --rcpt over 100000 entries: %llu ms, %ld rows\n", (unsigned long long)(t1 - t0), nr);
	f.limit = 50;
	t0 = now_ms();
	nr = nlist(qs, &f);
	t1 = now_ms();
	ok(t1 - t0 < 1000, "--rcpt --limit 50: %llu ms", (unsigned long long)(t1 - t0));

	sqlite3_close(db);
	qstore_close(&qs);
	envelope_clear(&e1);
	envelope_clear(&e2);
	envelope_clear(&e3);
	envelope_clear(&e4);
	envelope_clear(&e5);
	envelope_clear(&e6);
	envelope_clear(&e7);
	for (int i = 0; i < 3; i++)
		envelope_clear(&eb[i]);
	conf_free(c);
	buf_free(&errs);
	buf_free(&text);
	if (!getenv("MOAT_KEEP_TMP")) {
		char cmd[600];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			printf("# cleanup failed\n");
	}
	return t_done();
}
