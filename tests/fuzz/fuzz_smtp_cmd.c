/*
 * fuzz_smtp_cmd.c - libFuzzer target for the SMTP command-line parsers in
 * gateway/smtp_parse.h: smtp_parse_command, smtp_parse_mail,
 * smtp_parse_rcpt, smtp_valid_helo, smtp_valid_xtext, smtp_addr_domain.
 *
 * The input is one command line (without CRLF), exactly as the session
 * hands it to the parser.  Besides memory safety (ASan/UBSan) it checks:
 *   - the argument returned by smtp_parse_command lies inside the line and
 *     has no trailing blanks;
 *   - a successful MAIL/RCPT parse yields a NUL-terminated address that fits
 *     the caller's buffer, holds no control characters (spool.h: values
 *     never contain CR, LF or NUL), is ASCII unless SMTPUTF8 was allowed,
 *     and DSN values (ENVID, ORCPT) hold no blanks or control characters;
 *   - a failed parse returns a 4xx/5xx reply;
 *   - smtp_valid_xtext agrees with RFC 3461 section 4 computed here.
 *
 *   ./fuzz_smtp_cmd -max_total_time=600 corpus/cmd
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* RFC 3461 4: xtext = *( xchar / hexchar ); xchar = 33..126 except + and =;
 * hexchar = "+" 2(upper-case hex digit) */
static bool
ref_xtext(const unsigned char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = s[i];
		if (c == '+') {
			for (int k = 1; k <= 2; k++) {
				if (i + k >= len)
					return false;
				unsigned char h = s[i + k];
				if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F')))
					return false;
			}
			i += 2;
		} else if (c < 33 || c > 126 || c == '=')
			return false;
	}
	return true;
}

static void
check_reply(const char *reply)
{
	CHECK(reply != NULL);
	size_t l = strlen(reply);
	CHECK(l >= 4);
	CHECK(reply[0] == '4' || reply[0] == '5');
	CHECK(reply[1] >= '0' && reply[1] <= '9' && reply[2] >= '0' && reply[2] <= '9');
}

static void
check_addr(const char *addr, size_t addrsz, bool utf8_ok)
{
	/* NUL-terminated inside the buffer (ASan catches a read past it) */
	size_t l = strnlen(addr, addrsz);
	CHECK(l < addrsz);
	for (size_t i = 0; i < l; i++) {
		unsigned char c = (unsigned char)addr[i];
		CHECK(c >= 0x20 && c != 0x7f);          /* no CR, LF, controls */
		if (!utf8_ok)
			CHECK(c < 0x80);
	}
	const char *d = smtp_addr_domain(addr);
	if (d != NULL) {
		CHECK(d > addr && d <= addr + l);
		CHECK(d[-1] == '@');
	}
}

static void
check_token(const char *s, size_t max)
{
	size_t l = strnlen(s, max + 1);
	CHECK(l <= max);
	for (size_t i = 0; i < l; i++) {
		unsigned char c = (unsigned char)s[i];
		CHECK(c > 0x20 && c != 0x7f);
	}
}

static void
parse_mail_rcpt(const char *arg, size_t len)
{
	/* exact-size heap buffers: any write past addrsz is an ASan report */
	static const size_t sizes[] = { SMTP_PATH_MAX + 1, 16, 1 };

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		for (int u = 0; u <= 1; u++) {
			size_t addrsz = sizes[si];
			char *addr = malloc(addrsz);
			struct smtp_mail_params mp;
			struct smtp_rcpt_params rp;
			const char *reply = NULL;

			CHECK(addr != NULL);
			memset(&mp, 0xa5, sizeof(mp));
			if (smtp_parse_mail(arg, len, u, addr, addrsz, &mp, &reply) == 0) {
				check_addr(addr, addrsz, u);
				CHECK(mp.size >= -1);
				CHECK(mp.body == BODY_7BIT || mp.body == BODY_8BITMIME ||
				    mp.body == BODY_BINARYMIME);
				CHECK(mp.ret == DSN_RET_UNSPEC || mp.ret == DSN_RET_FULL ||
				    mp.ret == DSN_RET_HDRS);
				check_token(mp.envid, SMTP_XTEXT_MAX);
				if (mp.envid[0] != '\0')
					CHECK(smtp_valid_xtext(mp.envid, strlen(mp.envid)));
			} else
				check_reply(reply);

			reply = NULL;
			memset(&rp, 0xa5, sizeof(rp));
			if (smtp_parse_rcpt(arg, len, u, addr, addrsz, &rp, &reply) == 0) {
				check_addr(addr, addrsz, u);
				CHECK(addr[0] != '\0');         /* RCPT refuses <> */
				CHECK((rp.notify & ~(unsigned)(DSN_NOTIFY_SUCCESS | DSN_NOTIFY_FAILURE |
				    DSN_NOTIFY_DELAY | DSN_NOTIFY_NEVER)) == 0);
				/* NEVER excludes the others (RFC 3461 4.1) */
				if (rp.notify & DSN_NOTIFY_NEVER)
					CHECK(rp.notify == DSN_NOTIFY_NEVER);
				check_token(rp.orcpt, SMTP_XTEXT_MAX);
			} else
				check_reply(reply);
			free(addr);
		}
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	struct smtp_command c;

	memset(&c, 0, sizeof(c));
	smtp_parse_command(line, size, &c);
	if (c.arg != NULL) {
		CHECK(c.arg >= line && c.arg <= line + size);
		CHECK(c.arglen <= (size_t)(line + size - c.arg));
		if (c.arglen > 0)
			CHECK(!is_blank(c.arg[c.arglen - 1]));
	} else
		CHECK(c.arglen == 0);

	switch (c.cmd) {
	case CMD_MAIL:
	case CMD_RCPT:
		if (c.arg != NULL)
			parse_mail_rcpt(c.arg, c.arglen);
		break;
	case CMD_HELO:
	case CMD_EHLO:
	case CMD_LHLO:
		if (c.arg != NULL)
			(void)smtp_valid_helo(c.arg, c.arglen);
		break;
	default:
		break;
	}

	/* the whole input as a MAIL/RCPT argument and as a HELO name */
	parse_mail_rcpt(line, size);
	(void)smtp_valid_helo(line, size);

	/* xtext validator against the RFC grammar */
	CHECK(smtp_valid_xtext(line, size) == ref_xtext(data, size));

	/* a NUL-terminated copy through smtp_addr_domain */
	char *z = malloc(size + 1);
	CHECK(z != NULL);
	memcpy(z, data, size);
	z[size] = '\0';
	const char *d = smtp_addr_domain(z);
	if (d != NULL) {
		CHECK(d > z && d <= z + strlen(z));
		CHECK(d[-1] == '@');
		CHECK(strchr(d, '@') == NULL);          /* after the LAST '@' */
	}
	free(z);
	return 0;
}
