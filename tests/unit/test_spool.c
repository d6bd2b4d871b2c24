/* test_spool.c - write, commit, read back, list, remove; crash leftovers */
#include "config.h"
#include "t.h"
#include "buf.h"
#include "conf.h"
#include "spool.h"
#include "util.h"
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static int nlisted;
static void count(const char *q, void *a) { nlisted++; }

int
main(void)
{
	char tmpl[] = "/tmp/moat-spool-XXXXXX";
	char *dir = mkdtemp(tmpl);
	struct buf e = BUF_INIT, text = BUF_INIT;
	struct moat_conf *c;
	char *err = NULL;

	buf_printf(&text, "state-dir %s\n", dir);
	c = conf_load_string("t", text.data, &e);
	ok(c != NULL, "config");
	ok(spool_init(c, &err) == 0, "spool_init");

	char q1[QID_SIZE], q2[QID_SIZE];
	spool_new_qid(q1);
	spool_new_qid(q2);
	ok(spool_valid_qid(q1) && strlen(q1) == 18, "qid format %s", q1);
	ok(strcmp(q1, q2) != 0, "qids differ");
	ok(!spool_valid_qid("../etc/passwd") && !spool_valid_qid("0123"), "bad qids refused");

	struct envelope env;
	memset(&env, 0, sizeof(env));
	moat_strlcpy(env.qid, q1, sizeof(env.qid));
	env.arrival = 1700000000;
	env.sender = xstrdup("sender@example.org");
	env.envid = xstrdup("ENV+2B1");
	env.ret = DSN_RET_HDRS;
	env.body = BODY_8BITMIME;
	env.client_addr = xstrdup("192.0.2.1");
	env.helo = xstrdup("client.example");
	env.proto = xstrdup("ESMTP");
	envelope_add_rcpt(&env, "a@example.net", "rfc822;a@example.net", DSN_NOTIFY_FAILURE);
	envelope_add_rcpt(&env, "\"b c\"@example.net", NULL, 0);

	struct spool_writer *w = spool_begin(&env, "Received: test\r\n", &err);
	ok(w != NULL, "spool_begin");
	char body[200000];
	for (size_t i = 0; i < sizeof(body); i++)
		body[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : 'a' + i % 26;
	spool_write(w, body, sizeof(body));
	is_int(spool_size(w), sizeof(body) + 16, "size counts prefix and body");
	struct stat st;
	char qpath[4096];
	spool_queue_path(q1, qpath, sizeof(qpath));
	ok(stat(qpath, &st) < 0, "not in queue/ before commit");
	ok(spool_commit(w, &err) == 0, "commit");
	ok(stat(qpath, &st) == 0, "in queue/ after commit");
	spool_writer_free(w);

	struct envelope r;
	ok(spool_read_envelope(q1, &r, &err) == 0, "read back%s%s", err ? ": " : "", err ? err : "");
	is_str(r.sender, "sender@example.org", "sender");
	is_str(r.envid, "ENV+2B1", "envid");
	is_int(r.ret, DSN_RET_HDRS, "ret");
	is_int(r.body, BODY_8BITMIME, "body");
	is_int(r.nrcpts, 2, "two rcpts");
	is_str(r.rcpts[0].orcpt, "rfc822;a@example.net", "orcpt");
	is_int(r.rcpts[0].notify, DSN_NOTIFY_FAILURE, "notify");
	is_str(r.rcpts[1].addr, "\"b c\"@example.net", "quoted rcpt with a blank");
	ok(r.rcpts[1].orcpt == NULL, "no orcpt");
	is_int(r.data_len, sizeof(body) + 16, "data length");
	int fd = open(qpath, O_RDONLY);
	char head[17];
	pread(fd, head, 16, r.data_off);
	head[16] = 0;
	is_str(head, "Received: test\r\n", "data offset points at the message");
	close(fd);
	envelope_clear(&r);

	/* null sender, abort, inject */
	free(env.sender);
	env.sender = xstrdup("");
	spool_new_qid(env.qid);
	w = spool_begin(&env, NULL, &err);
	spool_write(w, "x", 1);
	spool_abort(w);
	spool_writer_free(w);
	spool_queue_path(env.qid, qpath, sizeof(qpath));
	ok(stat(qpath, &st) < 0, "aborted message not queued");
	ok(spool_inject(&env, "Subject: dsn\r\n\r\nx\r\n", 19, &err) == 0, "inject");
	ok(spool_read_envelope(env.qid, &r, &err) == 0 && r.sender[0] == '\0' && r.data_len == 19,
	    "null sender round trip");
	envelope_clear(&r);

	/* headers added by a verdict are stored after the message, read back
	 * separately, and do not change data_len */
	spool_new_qid(env.qid);
	w = spool_begin(&env, NULL, &err);
	spool_write(w, "Subject: x\r\n\r\nbody\r\n", 21);
	spool_set_headers(w, "X-Spam-Status: No\r\n", 19);
	ok(spool_commit(w, &err) == 0, "commit with added headers");
	spool_writer_free(w);
	ok(spool_read_envelope(env.qid, &r, &err) == 0 && r.data_len == 21, "data_len excludes added headers");
	ok(r.add_headers && r.add_headers_len == 19 && !strcmp(r.add_headers, "X-Spam-Status: No\r\n"),
	    "added headers read back");
	envelope_clear(&r);
	spool_remove(env.qid);

	nlisted = 0;
	is_int(spool_list(count, NULL), 2, "two queued");

	/* a crash leftover in incoming/ is removed */
	char inc[4096];
	snprintf(inc, sizeof(inc), "%s/spool/incoming/%s", dir, "0000000000000AA000");
	close(open(inc, O_CREAT | O_WRONLY, 0600));
	is_int(spool_clean_incoming(), 1, "incoming cleaned");

	/* a truncated queue file is refused, not crashed on */
	snprintf(inc, sizeof(inc), "%s/spool/queue/%s", dir, "0000000000000BB000");
	fd = open(inc, O_CREAT | O_WRONLY, 0600);
	write(fd, "MOAT-SPOOL 1\nqid 0000000000000BB000\nsender a@b\n", 47);
	close(fd);
	ok(spool_read_envelope("0000000000000BB000", &r, &err) < 0, "truncated envelope refused: %s", err);
	free(err);
	err = NULL;

	ok(spool_remove(q1) == 0 && spool_read_envelope(q1, &r, &err) < 0, "remove");
	free(err);
	envelope_clear(&env);
	conf_free(c);
	buf_free(&e);
	buf_free(&text);
	char cmdline[256];
	snprintf(cmdline, sizeof(cmdline), "rm -rf %s", dir);
	system(cmdline);
	return t_done();
}
