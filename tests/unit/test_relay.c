/*
 * test_relay.c - unit tests for the pure parts of gateway/relay.c: EHLO
 * keyword parsing, MAIL/RCPT command formatting (ESMTP and DSN
 * parameters only when offered), and dot-stuffing of the DATA stream fed
 * in every chunking (a byte at a time too) -- no message may end early.
 */
#include "config.h"
#include "relay.h"
#include "buf.h"
#include "spool.h"
#include "util.h"
#include "t.h"

#include <stdlib.h>
#include <string.h>

static void
stuff_chunked(const char *in, size_t len, size_t chunk, struct buf *out)
{
	struct relay_stuffer s;

	relay_stuff_init(&s);
	for (size_t i = 0; i < len; i += chunk)
		relay_stuff(&s, in + i, MIN(chunk, len - i), out);
	relay_stuff_end(&s, out);
}

static void
check_stuff(const char *in, const char *want, const char *name)
{
	size_t len = strlen(in);
	int good = 1;

	for (size_t chunk = 1; chunk <= len + 1; chunk++) {
		struct buf out = BUF_INIT;
		stuff_chunked(in, len, chunk, &out);
		if (out.len != strlen(want) || memcmp(out.data, want, out.len) != 0) {
			printf("# chunk %zu: got \"%s\"\n", chunk, out.data ? out.data : "");
			good = 0;
		}
		buf_free(&out);
		if (!good)
			break;
	}
	ok(good, "stuffing: %s (every chunk size)", name);
}

/* the stuffed stream must contain CRLF.CRLF exactly once, at the end */
static void
check_no_early_end(const char *in, const char *name)
{
	struct buf out = BUF_INIT;
	stuff_chunked(in, strlen(in), 1, &out);
	const char *p = out.data, *hit = NULL;
	size_t n = 0;
	/* the terminator may also be at the very start (".\r\n" for an empty body) */
	if (out.len >= 3 && !memcmp(out.data, ".\r\n", 3) && out.len == 3)
		n = 1;
	while ((p = memmem(p, out.len - (size_t)(p - out.data), "\n.\r\n", 4)) != NULL) {
		hit = p;
		n++;
		p++;
	}
	ok(n == 1 && hit == out.data + out.len - 4, "no early end of data: %s", name);
	buf_free(&out);
}

static void
test_stuffing(void)
{
	check_stuff("", ".\r\n", "empty message");
	check_stuff("a\r\n", "a\r\n.\r\n", "one line");
	check_stuff("a", "a\r\n.\r\n", "missing final CRLF is added");
	check_stuff(".\r\n", "..\r\n.\r\n", "a lone dot line");
	check_stuff("a\r\n.b\r\n..c\r\n", "a\r\n..b\r\n...c\r\n.\r\n", "leading dots doubled");
	check_stuff("a.b\r\nx. y\r\n", "a.b\r\nx. y\r\n.\r\n", "inner dots untouched");
	check_stuff("a\n.\r\nb\r\n", "a\n..\r\nb\r\n.\r\n", "dot after bare LF stuffed (smuggling)");
	check_stuff("a\r.\r\n", "a\r.\r\n.\r\n", "dot after bare CR is content");
	check_stuff("a\r\n", "a\r\n.\r\n", "final CRLF not doubled");
	check_stuff("a\r", "a\r\r\n.\r\n", "final bare CR completed");
	check_no_early_end("x\r\n.\r\nHELO evil\r\n", "embedded CRLF.CRLF");
	check_no_early_end("x\n.\nMAIL FROM:<a>\r\n.\r\n", "bare-LF terminator variants");
	check_no_early_end(".\r\n.\r\n.\r\n", "dot lines only");
}

static void
test_ehlo(void)
{
	struct relay_ext x;
	const char *lines[] = { "PIPELINING", "SIZE 10240000", "8BITMIME", "dsn", "SMTPUTF8",
		"CHUNKING", "STARTTLS", "ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN", "X-UNKNOWN" };

	memset(&x, 0, sizeof(x));
	for (size_t i = 0; i < ARRAY_SIZE(lines); i++)
		relay_parse_ehlo_line(lines[i], strlen(lines[i]), &x);
	ok(x.pipelining && x.eightbit && x.dsn && x.smtputf8 && x.chunking && x.starttls && x.enhanced,
	    "EHLO keywords recognised (case-insensitive)");
	ok(x.size && x.size_max == 10240000, "SIZE value parsed");

	memset(&x, 0, sizeof(x));
	relay_parse_ehlo_line("SIZE", 4, &x);
	ok(x.size && x.size_max == 0, "SIZE without a value: no limit");
	relay_parse_ehlo_line("SIZE 12x", 8, &x);
	ok(x.size_max == 0, "garbage SIZE value ignored");
	relay_parse_ehlo_line("SIZE 99999999999999999999999", 27, &x);
	ok(x.size_max == 0, "overflowing SIZE value ignored");
	relay_parse_ehlo_line("PIPELININGX", 11, &x);
	ok(!x.pipelining, "keyword prefix is not the keyword");
	relay_parse_ehlo_line("DSN", 2, &x);
	ok(!x.dsn, "length is respected");
}

static void
test_format(void)
{
	struct envelope env;
	struct relay_ext none, all;
	struct buf b = BUF_INIT;

	memset(&env, 0, sizeof(env));
	memset(&none, 0, sizeof(none));
	memset(&all, 0, sizeof(all));
	all.size = all.eightbit = all.dsn = all.smtputf8 = all.pipelining = true;
	env.sender = xstrdup("a@example.org");
	env.envid = xstrdup("abc+2B1");
	env.ret = DSN_RET_HDRS;
	env.body = BODY_8BITMIME;
	env.smtputf8 = true;
	envelope_add_rcpt(&env, "b@example.net", "rfc822;B@example.net", DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE);
	envelope_add_rcpt(&env, "c+x=y@example.net", NULL, DSN_NOTIFY_NEVER);
	envelope_add_rcpt(&env, "d@example.net", NULL, 0);

	relay_fmt_mail(&b, &env, &none, 1234);
	is_str(b.data, "MAIL FROM:<a@example.org>\r\n", "MAIL without extensions: no parameters");
	buf_reset(&b);
	relay_fmt_mail(&b, &env, &all, 1234);
	is_str(b.data, "MAIL FROM:<a@example.org> SIZE=1234 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc+2B1\r\n",
	    "MAIL with every extension");
	buf_reset(&b);
	relay_fmt_rcpt(&b, &env, 0, &none);
	is_str(b.data, "RCPT TO:<b@example.net>\r\n", "RCPT without DSN: no parameters");
	buf_reset(&b);
	relay_fmt_rcpt(&b, &env, 0, &all);
	is_str(b.data, "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B@example.net\r\n",
	    "RCPT with NOTIFY and ORCPT as received");
	buf_reset(&b);
	relay_fmt_rcpt(&b, &env, 1, &all);
	is_str(b.data, "RCPT TO:<c+x=y@example.net> NOTIFY=NEVER ORCPT=rfc822;c+2Bx+3Dy@example.net\r\n",
	    "RCPT NOTIFY=NEVER, ORCPT built as xtext");
	buf_reset(&b);
	relay_fmt_rcpt(&b, &env, 2, &all);
	is_str(b.data, "RCPT TO:<d@example.net> ORCPT=rfc822;d@example.net\r\n", "RCPT without NOTIFY");
	buf_reset(&b);
	free(env.sender);
	env.sender = xstrdup("");
	env.body = BODY_7BIT;
	relay_fmt_mail(&b, &env, &none, 1);
	is_str(b.data, "MAIL FROM:<>\r\n", "null sender");
	buf_free(&b);
	envelope_clear(&env);
}

int
main(void)
{
	test_stuffing();
	test_ehlo();
	test_format();
	return t_done();
}
