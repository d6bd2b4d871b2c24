/*
 * test_dsn.c - unit tests for gateway/dsn.c: RFC 3464 report structure,
 * RET=FULL/HDRS and the size cap, xtext, status codes from replies, and
 * hostile values (CR/LF injection, overlong replies).
 */
#include "config.h"
#include "dsn.h"
#include "buf.h"
#include "util.h"
#include "t.h"

#include <stdlib.h>
#include <string.h>

static const char *orig =
    "Received: from x by y\r\n"
    "From: <a@example.org>\r\n"
    "Subject: hello\r\n"
    "\r\n"
    "body line\r\n"
    ".leading dot\r\n";

static int
count(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

/* every line ends in CRLF and is at most 998 bytes */
static int
lines_ok(const char *s, size_t len)
{
	size_t ls = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '\n') {
			if (i == 0 || s[i - 1] != '\r')
				return 0;
			if (i - ls > 999)
				return 0;
			ls = i + 1;
		} else if (s[i] == '\r' && (i + 1 >= len || s[i + 1] != '\n'))
			return 0;
	}
	return ls == len;
}

static void
test_status(void)
{
	char st[16];

	dsn_status_of_reply("550 5.1.1 no such user", st, sizeof(st));
	is_str(st, "5.1.1", "enhanced status taken from the reply");
	dsn_status_of_reply("550 no such user", st, sizeof(st));
	is_str(st, "5.0.0", "no enhanced code: class.0.0");
	dsn_status_of_reply("451 5.1.1 inconsistent", st, sizeof(st));
	is_str(st, "4.0.0", "enhanced code of another class is ignored");
	dsn_status_of_reply("452 4.2.2 mailbox full", st, sizeof(st));
	is_str(st, "4.2.2", "4xx enhanced");
	dsn_status_of_reply("550 5.1234.1 x", st, sizeof(st));
	is_str(st, "5.0.0", "overlong subject digits refused");
	dsn_status_of_reply("hello", st, sizeof(st));
	is_str(st, "", "garbage gives empty status");
	dsn_status_of_reply("250-5.0.0", st, sizeof(st));
	is_str(st, "2.0.0", "class mismatch on a continuation line");
}

static void
test_xtext(void)
{
	char out[64];

	ok(dsn_xtext_decode("rfc822+3Ba+2Bb@x", out, sizeof(out)), "xtext decodes");
	is_str(out, "rfc822;a+b@x", "xtext decoded value");
	ok(!dsn_xtext_decode("a+zz", out, sizeof(out)), "bad hex is refused");
	ok(dsn_xtext_decode("a+0Db", out, sizeof(out)), "encoded CR decodes");
	is_str(out, "a+0Db", "control bytes stay encoded");
	ok(dsn_xtext_encode("a+b=c d", out, sizeof(out)), "xtext encodes");
	is_str(out, "a+2Bb+3Dc+20d", "xtext encoded value");
	ok(!dsn_xtext_encode("aaaaaaaaaa", out, 5), "encode reports truncation");
	ok(!dsn_xtext_decode("aaaaaaaaaa", out, 5), "decode reports truncation");
	is_int(strlen(out), 4, "truncated output stays bounded");
}

static void
test_failed_full(void)
{
	struct buf b = BUF_INIT;
	struct dsn_rcpt rc[2] = {
		{ .addr = "bad@example.net", .orcpt = "rfc822;Bad+2Bx@example.net",
		  .action = DSN_ACT_FAILED, .remote_mta = "127.0.0.1",
		  .reply = "550 5.1.1 <bad@example.net>: no such user", .last_attempt = 1700000000 },
		{ .addr = "slow@example.net", .action = DSN_ACT_FAILED, .status = "4.4.7",
		  .diag = "message expired after 5 days", .last_attempt = 1700000000 },
	};
	struct dsn_report r = {
		.hostname = "mx.moat.test", .qid = "0123456789ABCDEF01", .sender = "a@example.org",
		.envid = "ENV+2B1", .ret = DSN_RET_UNSPEC, .arrival = 1700000000, .now = 1700000100,
		.boundary_seed = "0123456789ABCDEF01.1", .rcpts = rc, .nrcpts = 2,
	};

	ok(dsn_build(&r, orig, strlen(orig), strlen(orig), &b) == 0, "failure DSN built");
	ok(lines_ok(b.data, b.len), "every line ends in CRLF and is short");
	ok(strstr(b.data, "From: Mail Delivery System <MAILER-DAEMON@mx.moat.test>\r\n") != NULL, "From MAILER-DAEMON");
	ok(strstr(b.data, "To: <a@example.org>\r\n") != NULL, "To the original sender");
	ok(strstr(b.data, "Auto-Submitted: auto-replied\r\n") != NULL, "Auto-Submitted");
	ok(strstr(b.data, "Content-Type: multipart/report; report-type=delivery-status;") != NULL,
	    "multipart/report");
	ok(strstr(b.data, "Content-Type: message/delivery-status\r\n") != NULL, "delivery-status part");
	ok(strstr(b.data, "Reporting-MTA: dns; mx.moat.test\r\n") != NULL, "Reporting-MTA");
	ok(strstr(b.data, "Original-Envelope-Id: ENV+1\r\n") != NULL, "ENVID decoded");
	ok(strstr(b.data, "Arrival-Date: ") != NULL, "Arrival-Date");
	ok(strstr(b.data, "Final-Recipient: rfc822; bad@example.net\r\n") != NULL, "Final-Recipient");
	ok(strstr(b.data, "Original-Recipient: rfc822; Bad+x@example.net\r\n") != NULL, "Original-Recipient decoded");
	is_int(count(b.data, "Action: failed\r\n"), 2, "two failed recipients");
	ok(strstr(b.data, "Status: 5.1.1\r\n") != NULL, "status from reply");
	ok(strstr(b.data, "Status: 4.4.7\r\n") != NULL, "explicit status");
	ok(strstr(b.data, "Remote-MTA: dns; 127.0.0.1\r\n") != NULL, "Remote-MTA");
	ok(strstr(b.data, "Diagnostic-Code: smtp; 550 5.1.1 <bad@example.net>: no such user\r\n") != NULL,
	    "Diagnostic-Code");
	ok(strstr(b.data, "Last-Attempt-Date: ") != NULL, "Last-Attempt-Date");
	ok(strstr(b.data, "Content-Type: message/rfc822\r\n") != NULL, "full original attached");
	ok(strstr(b.data, "\r\nbody line\r\n.leading dot\r\n") != NULL, "original body intact");
	ok(strstr(b.data, "--0123456789ABCDEF01.1/mx.moat.test--\r\n") != NULL, "closing boundary");
	ok(strstr(b.data, "Subject: Undelivered Mail Returned to Sender\r\n") != NULL, "subject");
	buf_free(&b);
}

static void
test_hdrs_and_cap(void)
{
	struct buf b = BUF_INIT;
	struct dsn_rcpt rc = { .addr = "x@example.net", .action = DSN_ACT_FAILED,
		.reply = "554 5.7.1 rejected" };
	struct dsn_report r = {
		.hostname = "mx.moat.test", .qid = "Q1", .sender = "a@example.org",
		.ret = DSN_RET_HDRS, .now = 1700000100, .rcpts = &rc, .nrcpts = 1,
	};

	ok(dsn_build(&r, orig, strlen(orig), strlen(orig), &b) == 0, "RET=HDRS DSN built");
	ok(strstr(b.data, "Content-Type: text/rfc822-headers\r\n") != NULL, "headers only for RET=HDRS");
	ok(strstr(b.data, "Subject: hello\r\n") != NULL, "original headers attached");
	ok(strstr(b.data, "body line") == NULL, "body not attached");
	ok(strstr(b.data, "Original-Envelope-Id") == NULL, "no ENVID field without ENVID");
	buf_free(&b);

	/* a big message with RET=FULL: headers only */
	size_t big = DSN_MAX_ORIGINAL + 10;
	char *m = malloc(big);
	memset(m, 'x', big);
	memcpy(m, "Subject: big\r\n\r\n", 16);
	r.ret = DSN_RET_FULL;
	ok(dsn_build(&r, m, big, big, &b) == 0, "DSN for big message built");
	ok(strstr(b.data, "Content-Type: text/rfc822-headers\r\n") != NULL, "big original: headers only");
	ok(b.len < 64 * 1024, "big original not copied (%zu bytes)", b.len);
	buf_free(&b);
	/* only a prefix was read by the caller */
	ok(dsn_build(&r, m, 100, big, &b) == 0, "DSN from a prefix built");
	ok(strstr(b.data, "Subject: big\r\n") != NULL, "prefix headers attached");
	buf_free(&b);
	free(m);
}

static void
test_success_and_hostile(void)
{
	struct buf b = BUF_INIT;
	char longreply[5000];
	memset(longreply, 'A', sizeof(longreply));
	memcpy(longreply, "550 5.0.0 ", 10);
	for (size_t i = 100; i < sizeof(longreply) - 1; i += 50)
		longreply[i] = ' ';
	longreply[sizeof(longreply) - 1] = '\0';

	struct dsn_rcpt rc[3] = {
		{ .addr = "ok@example.net", .action = DSN_ACT_DELIVERED, .reply = NULL },
		{ .addr = "evil@example.net\r\nBcc: victim@x", .action = DSN_ACT_RELAYED,
		  .remote_mta = "h\r\nX: y", .reply = "250 ok\r\nInjected: yes" },
		{ .addr = "long@example.net", .action = DSN_ACT_FAILED, .reply = longreply },
	};
	struct dsn_report r = {
		.hostname = "mx.moat.test", .qid = "Q2", .sender = "s@example.org\r\nX-Evil: 1",
		.ret = DSN_RET_FULL, .now = 1700000100, .rcpts = rc, .nrcpts = 2,
	};
	ok(dsn_build(&r, NULL, 0, 0, &b) == 0, "success DSN without original");
	ok(strstr(b.data, "Subject: Successful Mail Delivery Report\r\n") != NULL, "success subject");
	ok(strstr(b.data, "Action: delivered\r\nStatus: 2.0.0\r\n") != NULL, "delivered 2.0.0");
	ok(strstr(b.data, "Action: relayed\r\n") != NULL, "relayed action");
	ok(strstr(b.data, "\r\nInjected:") == NULL, "no header injection from reply");
	ok(strstr(b.data, "\r\nBcc:") == NULL, "no header injection from address");
	ok(strstr(b.data, "\r\nX-Evil:") == NULL, "no header injection from sender");
	ok(strstr(b.data, "\r\nX: y") == NULL, "no header injection from remote MTA");
	ok(lines_ok(b.data, b.len), "lines well formed");
	buf_free(&b);

	r.nrcpts = 3;
	ok(dsn_build(&r, orig, strlen(orig), strlen(orig), &b) == 0, "DSN with overlong reply");
	ok(lines_ok(b.data, b.len), "overlong diagnostic folded and capped");
	ok(b.len < 8000 + strlen(orig), "overlong reply capped");
	buf_free(&b);

	r.nrcpts = 0;
	ok(dsn_build(&r, orig, strlen(orig), strlen(orig), &b) == -1, "nothing to report");
	buf_free(&b);
}

static void
test_boundary_collision(void)
{
	struct buf b = BUF_INIT;
	const char *o = "Subject: x\r\n\r\n--S1/mx.moat.test\r\n";
	struct dsn_rcpt rc = { .addr = "x@example.net", .action = DSN_ACT_FAILED, .reply = "550 no" };
	struct dsn_report r = {
		.hostname = "mx.moat.test", .qid = "Q3", .sender = "a@example.org",
		.now = 1700000100, .boundary_seed = "S1", .rcpts = &rc, .nrcpts = 1,
	};
	ok(dsn_build(&r, o, strlen(o), strlen(o), &b) == 0, "DSN built");
	ok(strstr(b.data, "boundary=\"S1/mx.moat.test/1\"") != NULL, "boundary avoids the original's text");
	buf_free(&b);
}

int
main(void)
{
	test_status();
	test_xtext();
	test_failed_full();
	test_hdrs_and_cap();
	test_success_and_hostile();
	test_boundary_collision();
	return t_done();
}
