/*
 * test_imap_parse.c - unit tests of store/imap_parse.c: the command reader
 * fed whole and a byte at a time (lines, {n} and {n+} literals, refused
 * literals, overlong lines), the argument tokenizer (atoms with [sections],
 * quoted strings, literals, nested lists and their depth limit), sequence
 * sets, dates and response quoting.
 */
#include "config.h"
#include "imap_parse.h"
#include "util.h"
#include "t.h"

#include <stdlib.h>
#include <string.h>

/* feed in chunks of `step`; collect events as letters: C cmd, L literal, T too long */
static void
run(const char *in, size_t len, size_t step, bool accept, char *ev, size_t evsz, struct buf *lastcmd)
{
	struct imap_reader r;
	size_t o = 0, i = 0;

	imap_reader_init(&r, 100, 1000);
	while (i < len) {
		size_t n = MIN(step, len - i), used = 0;
		enum imap_rd e = imap_reader_feed(&r, in + i, n, &used);
		i += used;
		if (e == IMAP_RD_CMD) {
			if (o + 1 < evsz)
				ev[o++] = 'C';
			buf_reset(lastcmd);
			buf_add(lastcmd, r.cmd.data ? r.cmd.data : "", r.cmd.len);
			imap_reader_reset(&r);
		} else if (e == IMAP_RD_LITERAL) {
			if (o + 1 < evsz)
				ev[o++] = 'L';
			imap_reader_literal(&r, accept);
		} else if (e == IMAP_RD_TOOLONG) {
			if (o + 1 < evsz)
				ev[o++] = 'T';
		}
	}
	ev[o] = '\0';
	imap_reader_free(&r);
}

static void
both(const char *in, bool accept, const char *want_ev, const char *want_cmd, const char *what)
{
	char ev1[64], ev2[64];
	struct buf c1 = BUF_INIT, c2 = BUF_INIT;
	size_t len = strlen(in);

	run(in, len, len, accept, ev1, sizeof(ev1), &c1);
	run(in, len, 1, accept, ev2, sizeof(ev2), &c2);
	is_str(ev1, want_ev, "%s: events (whole)", what);
	is_str(ev2, want_ev, "%s: events (byte at a time)", what);
	if (want_cmd) {
		ok(c1.len == strlen(want_cmd) && !memcmp(c1.data, want_cmd, c1.len), "%s: command (whole)", what);
		ok(c2.len == strlen(want_cmd) && !memcmp(c2.data, want_cmd, c2.len), "%s: command (byte at a time)", what);
	}
	buf_free(&c1);
	buf_free(&c2);
}

int
main(void)
{
	struct imap_arg *a;
	size_t n;
	const char *err;
	struct imap_seqset set;
	time_t tm;
	char d[64];
	struct buf b = BUF_INIT;

	both("a1 NOOP\r\n", true, "C", "a1 NOOP", "simple line");
	both("a1 NOOP\n", true, "C", "a1 NOOP", "bare LF");
	both("a1 LOGIN {5}\r\nalice {3}\r\npwd\r\n", true, "LLC", "a1 LOGIN {5}\r\nalice {3}\r\npwd", "two literals");
	both("a1 APPEND X {4+}\r\nab\r\n\r\na2 NOOP\r\n", true, "LCC", "a2 NOOP", "LITERAL+ with CRLF inside");
	both("a1 APPEND X {4+}\r\nabcd\r\na2 NOOP\r\n", false, "LC", "a2 NOOP", "refused LITERAL+ is skipped");
	both("a1 LOGIN {5}\r\na2 NOOP\r\n", false, "LC", "a2 NOOP", "refused sync literal: next line is a new command");
	{
		char big[400];
		memset(big, 'x', sizeof(big));
		memcpy(big, "a1 ", 3);
		memcpy(big + sizeof(big) - 12, "\r\na2 NOOP\r\n", 11);
		big[sizeof(big) - 1] = '\0';
		both(big, true, "TC", "a2 NOOP", "overlong line skipped, next command fine");
	}
	both("a1 X {99999999999999}\r\n", true, "C", NULL, "absurd literal size is not a literal");
	both("a1 {0}\r\n\r\n", true, "LC", "a1 {0}\r\n", "empty literal");

	static const char tok[] = "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]<0.100>) \"a \\\"q\\\"\" NIL {3}\r\nxyz";
	ok(imap_args_parse(tok, sizeof(tok) - 1, &a, &n, &err) == 0,
	    "tokenize: list, section atom, quoted, NIL, literal");
	ok(n == 4 && a[0].type == IA_LIST && a[0].nlist == 2 && a[0].list[1].len == 46 &&
	   a[1].type == IA_STRING && !strcmp(a[1].s, "a \"q\"") && a[2].type == IA_NIL &&
	   a[3].type == IA_LITERAL && a[3].len == 3 && !memcmp(a[3].s, "xyz", 3), "token values");
	imap_args_free(a, n);
	{
		char deep[100];
		memset(deep, '(', 40);
		memset(deep + 40, ')', 40);
		ok(imap_args_parse(deep, 80, &a, &n, &err) < 0, "nesting limit: %s", err ? err : "");
	}
	ok(imap_args_parse("(a b", 4, &a, &n, &err) < 0, "missing ): %s", err ? err : "");
	ok(imap_args_parse("a)", 2, &a, &n, &err) < 0, "stray ): %s", err ? err : "");
	ok(imap_args_parse("\"abc", 4, &a, &n, &err) < 0, "unterminated quote");
	ok(imap_args_parse("{10}\r\nab", 8, &a, &n, &err) < 0, "literal longer than the data");
	ok(imap_args_parse("BODY[HEADER", 11, &a, &n, &err) == 0 && n == 1 && a[0].type == IA_ATOM && a[0].len == 11,
	   "'[' without ']' is an ATOM-CHAR (imaptest atoms)");
	imap_args_free(a, n);
	ok(imap_args_parse("a[b} x", 6, &a, &n, &err) == 0 && n == 2 && a[0].len == 4, "mailbox atom with [ and }");
	imap_args_free(a, n);
	ok(imap_args_parse("\x01", 1, &a, &n, &err) < 0, "control character");

	ok(imap_seqset_parse("1,3:5,7:*", 9, &set), "seqset parse");
	ok(imap_seqset_has(&set, 4, 10) && !imap_seqset_has(&set, 6, 10) && imap_seqset_has(&set, 10, 10) &&
	   imap_seqset_has(&set, 1, 10), "seqset membership");
	imap_seqset_free(&set);
	ok(imap_seqset_parse("5:2", 3, &set) && imap_seqset_has(&set, 3, 9), "reversed range");
	imap_seqset_free(&set);
	ok(imap_seqset_parse("1:4294967295", 12, &set) && imap_seqset_has(&set, 7, 9) &&
	   imap_seqset_has(&set, 9, 9), "seqset up to 4294967295 (imaptest search-sets)");
	imap_seqset_free(&set);
	ok(imap_seqset_parse("10:4294967295", 13, &set) && !imap_seqset_has(&set, 9, 9),
	   "10:4294967295 does not match the highest UID 9 (unlike 10:*)");
	imap_seqset_free(&set);
	ok(!imap_seqset_parse("0", 1, &set) && !imap_seqset_parse("1,", 2, &set) && !imap_seqset_parse("a", 1, &set) &&
	   !imap_seqset_parse("4294967296", 10, &set) && !imap_seqset_parse("", 0, &set), "bad seqsets");

	ok(imap_date_parse("1-Feb-2024", 10, &tm) && tm == 1706745600, "date");
	ok(!imap_date_parse("31-Foo-2024", 11, &tm), "bad month");
	ok(imap_datetime_parse("17-Jul-1996 02:44:25 -0700", 26, &tm) && tm == 837596665, "date-time with zone");
	ok(imap_datetime_parse(" 7-Jul-1996 02:44:25 +0000", 26, &tm), "space-padded day");
	imap_datetime_fmt(837596665, d, sizeof(d));
	is_str(d, "17-Jul-1996 09:44:25 +0000", "INTERNALDATE format");

	imap_add_string(&b, "a\"b", 3);
	is_str(b.data, "\"a\\\"b\"", "quoted with escapes");
	buf_reset(&b);
	imap_add_string(&b, "x\r\ny", 4);
	is_str(b.data, "{4}\r\nx\r\ny", "CRLF -> literal");
	buf_reset(&b);
	imap_add_nstring(&b, NULL);
	is_str(b.data, "NIL", "NIL");
	buf_free(&b);
	return t_done();
}
