/* test_smtp_parse.c - command, path, parameter parsers and the DATA reader
 * (fed whole, a byte at a time, and in every two-way split). */
#include "config.h"
#include "t.h"
#include "buf.h"
#include "smtp_parse.h"
#include "util.h"
#include <stdlib.h>

static enum smtp_cmd
cmd(const char *s)
{
	struct smtp_command c;
	smtp_parse_command(s, strlen(s), &c);
	return c.cmd;
}

static int
mail(const char *arg, char *addr, struct smtp_mail_params *mp, const char **rep)
{
	return smtp_parse_mail(arg, strlen(arg), true, addr, SMTP_PATH_MAX + 1, mp, rep);
}

static int
rcpt(const char *arg, bool utf8, char *addr, struct smtp_rcpt_params *rp, const char **rep)
{
	return smtp_parse_rcpt(arg, strlen(arg), utf8, addr, SMTP_PATH_MAX + 1, rp, rep);
}

static void
emit_buf(void *arg, const char *p, size_t len)
{
	buf_add(arg, p, len);
}

struct dres {
	struct buf out;
	size_t consumed;
	bool done;
	unsigned flags;
};

/* feed in pieces of `step` bytes (0 = all at once); stop at done */
static void
feed(const char *in, size_t len, size_t step, size_t maxline, size_t maxsize, struct dres *r)
{
	struct smtp_data_reader dr;
	size_t off = 0;

	memset(r, 0, sizeof(*r));
	smtp_data_init(&dr, maxline, maxsize);
	while (off < len && !r->done) {
		size_t n = step ? MIN(step, len - off) : len - off;
		off += smtp_data_feed(&dr, in + off, n, emit_buf, &r->out, &r->done);
	}
	r->consumed = off;
	r->flags = dr.flags;
}

static bool
all_chunkings(const char *in, const char *want, size_t want_consumed, unsigned want_flags)
{
	size_t len = strlen(in);
	struct dres r;
	bool good = true;

	for (size_t step = 0; step <= 3; step++) {
		feed(in, len, step, 1000, 1 << 20, &r);
		if (!r.done || r.consumed != want_consumed || strcmp(r.out.data ? r.out.data : "", want) ||
		    r.flags != want_flags)
			good = false;
		buf_free(&r.out);
	}
	/* every split into two feeds */
	for (size_t cut = 0; cut <= len && good; cut++) {
		struct smtp_data_reader dr;
		struct buf out = BUF_INIT;
		bool done = false;
		size_t c1;
		smtp_data_init(&dr, 1000, 1 << 20);
		c1 = smtp_data_feed(&dr, in, cut, emit_buf, &out, &done);
		if (!done)
			c1 += smtp_data_feed(&dr, in + cut, len - cut, emit_buf, &out, &done);
		if (!done || c1 != want_consumed || strcmp(out.data ? out.data : "", want) ||
		    dr.flags != want_flags)
			good = false;
		buf_free(&out);
	}
	return good;
}

int
main(void)
{
	char a[SMTP_PATH_MAX + 1];
	struct smtp_mail_params mp;
	struct smtp_rcpt_params rp;
	const char *rep;
	struct smtp_command c;

	/* commands */
	is_int(cmd("EHLO x"), CMD_EHLO, "EHLO");
	is_int(cmd("ehlo x"), CMD_EHLO, "case-insensitive verb");
	is_int(cmd("MAIL FROM:<a@b>"), CMD_MAIL, "MAIL");
	is_int(cmd("DATA"), CMD_DATA, "DATA");
	is_int(cmd("DATAX"), CMD_UNKNOWN, "DATAX is unknown");
	is_int(cmd(""), CMD_UNKNOWN, "empty line");
	is_int(cmd("GET / HTTP/1.1"), CMD_HTTP, "HTTP verb recognised");
	smtp_parse_command("HELO  host.example  ", 20, &c);
	ok(c.arglen == 13 && !memcmp(c.arg, " host.example", 13), "argument keeps inner, trims trailing blanks");

	/* MAIL */
	ok(mail("FROM:<user@example.org>", a, &mp, &rep) == 0 && !strcmp(a, "user@example.org"), "simple sender");
	ok(mail("FROM:<>", a, &mp, &rep) == 0 && a[0] == '\0', "null sender");
	ok(mail("from: <user@example.org>", a, &mp, &rep) == 0, "blank after colon tolerated");
	ok(mail("FROM:user@example.org", a, &mp, &rep) == 0, "bare address tolerated (Postfix default)");
	ok(mail("FROM:<user@example.org> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=abc+2B1", a, &mp, &rep) == 0 &&
	    mp.size == 1000 && mp.body == BODY_8BITMIME && mp.ret == DSN_RET_HDRS && !strcmp(mp.envid, "abc+2B1"),
	    "MAIL parameters");
	ok(mail("FROM:<u@e.org> SIZE=1 SIZE=2", a, &mp, &rep) < 0 && !strncmp(rep, "501", 3), "duplicate parameter");
	ok(mail("FROM:<u@e.org> FOO=1", a, &mp, &rep) < 0 && !strncmp(rep, "555 5.5.4", 9), "unknown parameter");
	ok(mail("FROM:<u@e.org> SIZE=abc", a, &mp, &rep) < 0, "bad SIZE");
	ok(mail("FROM:<u@e.org> ENVID=a=b", a, &mp, &rep) < 0, "bad xtext");
	ok(mail("FROM:<u@e.org> RET=ALL", a, &mp, &rep) < 0, "bad RET");
	ok(mail("FROM:<u@@e.org>", a, &mp, &rep) < 0 && !strncmp(rep, "501 5.1.7", 9), "bad address");
	ok(mail("FROM:<u@e.org", a, &mp, &rep) < 0, "unclosed bracket");
	ok(mail("TO:<u@e.org>", a, &mp, &rep) < 0 && !strncmp(rep, "501 5.5.4", 9), "TO: in MAIL");
	ok(mail("FROM:<@relay.example:u@e.org>", a, &mp, &rep) == 0 && !strcmp(a, "u@e.org"), "source route stripped");
	ok(mail("FROM:<\"john doe\"@e.org>", a, &mp, &rep) == 0 && !strcmp(a, "\"john doe\"@e.org"), "quoted local part");
	ok(mail("FROM:<u@[192.0.2.1]>", a, &mp, &rep) == 0, "address literal");
	ok(mail("FROM:<u@[IPv6:2001:db8::1]>", a, &mp, &rep) == 0, "IPv6 literal");
	ok(mail("FROM:<u@[300.1.1.1]>", a, &mp, &rep) < 0, "bad literal");
	ok(mail("FROM:<j\xc3\xb6rg@e.org>", a, &mp, &rep) < 0 && !strncmp(rep, "553 5.6.7", 9), "UTF-8 without SMTPUTF8");
	ok(mail("FROM:<j\xc3\xb6rg@e.org> SMTPUTF8", a, &mp, &rep) == 0 && mp.smtputf8, "UTF-8 with SMTPUTF8");
	ok(mail("FROM:<j\xc3\x28rg@e.org> SMTPUTF8", a, &mp, &rep) < 0, "invalid UTF-8 refused");
	ok(mail("FROM:<u@e.org>\x01", a, &mp, &rep) < 0, "control char after path");

	/* RCPT */
	ok(rcpt("TO:<x@example.net>", false, a, &rp, &rep) == 0 && !strcmp(a, "x@example.net"), "simple rcpt");
	ok(rcpt("TO:<>", false, a, &rp, &rep) < 0, "null recipient refused");
	ok(rcpt("TO:<Postmaster>", false, a, &rp, &rep) == 0 && !strcmp(a, "postmaster"), "bare postmaster");
	ok(rcpt("TO:<bob>", false, a, &rp, &rep) < 0, "other bare local part refused");
	ok(rcpt("TO:<x@e.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40e.net", false, a, &rp, &rep) == 0 &&
	    rp.notify == (DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE) && !strcmp(rp.orcpt, "rfc822;x+40e.net"),
	    "DSN parameters");
	ok(rcpt("TO:<x@e.net> NOTIFY=NEVER", false, a, &rp, &rep) == 0 && rp.notify == DSN_NOTIFY_NEVER, "NOTIFY=NEVER");
	ok(rcpt("TO:<x@e.net> NOTIFY=NEVER,SUCCESS", false, a, &rp, &rep) < 0, "NEVER combined refused");
	ok(rcpt("TO:<x@e.net> NOTIFY=SUCCESS,", false, a, &rp, &rep) < 0, "trailing comma refused");
	ok(rcpt("TO:<x@e.net> ORCPT=x@e.net", false, a, &rp, &rep) < 0, "ORCPT without type refused");
	ok(rcpt("TO:<x@e.net> ORCPT=utf-8;j\xc3\xb6rg@e.net", true, a, &rp, &rep) == 0, "UTF-8 ORCPT with SMTPUTF8");
	ok(rcpt("TO:<x@e.net> ORCPT=utf-8;ab\x01" "c", true, a, &rp, &rep) < 0, "ORCPT with a control char refused");
	ok(rcpt("TO:<x@e.net> ORCPT=utf-8;ab\x7f" "c", true, a, &rp, &rep) < 0, "ORCPT with DEL refused");
	ok(rcpt("TO:<x@e.net> NOTIFY=DELAY NOTIFY=DELAY", false, a, &rp, &rep) < 0, "duplicate NOTIFY");
	ok(rcpt("TO:<user%other.example@e.net>", false, a, &rp, &rep) == 0 && !strcmp(smtp_addr_domain(a), "e.net"),
	    "percent hack: the domain is the part after the last @");
	ok(rcpt("TO:<@a,@b:x@e.net>", false, a, &rp, &rep) == 0 && !strcmp(a, "x@e.net"), "source route");
	ok(rcpt("TO:<x@e.net", false, a, &rp, &rep) < 0, "unterminated");
	ok(rcpt("TO:<x@-e.net>", false, a, &rp, &rep) < 0, "label starting with hyphen");
	ok(rcpt("TO:<.x@e.net>", false, a, &rp, &rep) < 0, "leading dot in local part");
	ok(rcpt("TO:<x..y@e.net>", false, a, &rp, &rep) < 0, "double dot in local part");
	{
		char big[700];
		memset(big, 'a', sizeof(big));
		memcpy(big, "TO:<", 4);
		memcpy(big + 600, "@e.net>", 8);
		ok(rcpt(big, false, a, &rp, &rep) < 0, "overlong path refused");
	}
	ok(smtp_valid_helo("mx.example.org", 14), "helo");
	ok(!smtp_valid_helo("a b", 3), "helo with blank");
	ok(!smtp_valid_helo("", 0), "empty helo");
	ok(smtp_valid_xtext("a+2Bb", 5) && !smtp_valid_xtext("a+2", 3) && !smtp_valid_xtext("a+2g", 4), "xtext");

	/* DATA reader */
	ok(all_chunkings("Subject: x\r\n\r\nbody\r\n.\r\n", "Subject: x\r\n\r\nbody\r\n", 23, 0),
	    "simple message, any chunking");
	ok(all_chunkings(".\r\n", "", 3, 0), "empty message");
	ok(all_chunkings("..x\r\n...\r\n.\r\n", ".x\r\n..\r\n", 13, 0), "dot-unstuffing");
	ok(all_chunkings("a\r\n.\r\nMAIL FROM:<x>\r\n", "a\r\n", 6, 0), "stops right after the end (pipelining)");
	ok(all_chunkings("a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n", "a\r\n.\r\nMAIL FROM:<x@y>\r\n", 25, SMTP_DATA_BARE_LF),
	    "bare LF before dot does not end data (smuggling)");
	ok(all_chunkings("a\r\n.\nb\r\n.\r\n", "a\r\n.\r\nb\r\n", 11, SMTP_DATA_BARE_LF),
	    "dot with bare LF is content");
	ok(all_chunkings("a\r.\r\nb\r\n.\r\n", "a\r.\r\nb\r\n", 11, 0), "bare CR before dot is content");
	ok(all_chunkings("a\rb\r\r\n.\r\n", "a\rb\r\r\n", 9, 0), "bare CRs kept as content");
	ok(all_chunkings(".\rx\r\n.\r\n", "\rx\r\n", 8, 0), "stuffed dot before bare CR");
	ok(all_chunkings("x\0y\r\n.\r\n", "", 0, 0) == false, "(NUL handled below)");
	{
		struct dres r;
		feed("x\0y\r\n.\r\n", 8, 1, 1000, 1 << 20, &r);
		ok(r.done && (r.flags & SMTP_DATA_NUL) && r.out.len == 5, "NUL flagged, kept");
		buf_free(&r.out);
		char longl[3000];
		memset(longl, 'x', 2000);
		memcpy(longl + 2000, "\r\n.\r\n", 6);
		feed(longl, 2005, 7, 1000, 1 << 20, &r);
		ok(r.done && (r.flags & SMTP_DATA_LONG_LINE), "long line flagged");
		buf_free(&r.out);
		feed(longl, 2005, 0, 1000, 100, &r);
		ok(r.done && (r.flags & SMTP_DATA_TOO_BIG) && r.out.len == 100 && r.consumed == 2005,
		    "size limit: output capped, input consumed to the end");
		buf_free(&r.out);
		feed("abc", 3, 1, 1000, 100, &r);
		ok(!r.done && r.consumed == 3, "incomplete data not done");
		buf_free(&r.out);
	}
	{
		struct smtp_data_reader dr;
		struct buf out = BUF_INIT;
		bool done;
		smtp_data_init(&dr, 1000, 1 << 20);
		dr.raw = true;
		smtp_data_feed(&dr, ".a\n.\r\n", 6, emit_buf, &out, &done);
		ok(!done && !strcmp(out.data, ".a\r\n.\r\n") && (dr.flags & SMTP_DATA_BARE_LF),
		    "raw (BDAT) mode: dots kept, bare LF normalised, never done");
		buf_free(&out);
	}
	return t_done();
}
