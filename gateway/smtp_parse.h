/*
 * smtp_parse.h - pure parsers for the SMTP server: command lines, paths
 * with their ESMTP parameters, and the DATA stream.  No I/O, no globals;
 * every function takes (pointer, length) and never reads past it, so each
 * is unit-tested byte by byte and fuzzed (tests/fuzz/).
 * Input: untrusted network bytes.
 */
#ifndef MOAT_SMTP_PARSE_H
#define MOAT_SMTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include "spool.h"

enum smtp_cmd {
	CMD_UNKNOWN, CMD_HELO, CMD_EHLO, CMD_LHLO, CMD_MAIL, CMD_RCPT, CMD_DATA,
	CMD_BDAT, CMD_RSET, CMD_NOOP, CMD_QUIT, CMD_HELP, CMD_VRFY, CMD_EXPN,
	CMD_STARTTLS, CMD_AUTH, CMD_ETRN,
	/* things that are not SMTP at all: answered and counted as bad */
	CMD_HTTP,
};

struct smtp_command {
	enum smtp_cmd cmd;
	const char   *arg;      /* points into the line: text after the verb and one space */
	size_t        arglen;   /* trailing blanks removed */
};

/* line: one command line without its CRLF */
void smtp_parse_command(const char *line, size_t len, struct smtp_command *out);

#define SMTP_PATH_MAX 512       /* RFC 5321 4.5.3.1.3: 256; we allow SMTPUTF8 room */
#define SMTP_XTEXT_MAX 500

struct smtp_mail_params {
	long long size;         /* SIZE=, -1 if absent */
	enum body_type body;
	bool smtputf8;
	enum dsn_ret ret;
	char envid[SMTP_XTEXT_MAX + 1];   /* "" if absent; xtext as received */
	bool auth_seen;         /* AUTH= (ignored, RFC 4954 5) */
};

struct smtp_rcpt_params {
	unsigned notify;        /* DSN_NOTIFY_*, 0 if absent */
	char orcpt[SMTP_XTEXT_MAX + 1];   /* "" if absent: "rfc822;xtext" */
};

/*
 * arg: the text after "MAIL" / "RCPT" (e.g. "FROM:<a@b> SIZE=10").
 * On success returns 0 and fills addr (without <>; "" for <>).
 * On error returns -1 and *reply is a complete SMTP reply ("501 5.1.7 ...").
 * RCPT refuses the null path (except <postmaster> without domain, which is
 * returned as "postmaster") and source routes are stripped per RFC 5321 C.
 */
int smtp_parse_mail(const char *arg, size_t len, bool utf8_ok, char *addr, size_t addrsz,
    struct smtp_mail_params *, const char **reply);
int smtp_parse_rcpt(const char *arg, size_t len, bool utf8_ok, char *addr, size_t addrsz,
    struct smtp_rcpt_params *, const char **reply);

/* the domain part of an address (after the last '@'), or NULL */
const char *smtp_addr_domain(const char *addr);
/* HELO/EHLO argument: a domain or an address literal; false if unusable */
bool smtp_valid_helo(const char *arg, size_t len);
/* xtext (RFC 3461 4): true if well formed */
bool smtp_valid_xtext(const char *s, size_t len);

/*
 * The DATA reader.  Feed it the bytes that follow "354" in any chunking;
 * it emits the message (dot-unstuffed, every line ending as CRLF) through
 * emit() and stops right after the terminating <CRLF>.<CRLF>, so bytes
 * pipelined after the end stay with the caller.
 *
 * End of data is only a "." line that ends in CRLF and follows a line that
 * ended in CRLF.  A line ending in a bare LF is accepted as a line end
 * (Postfix >= 3.9 smtpd_forbid_bare_newline=normal) but can never make the
 * following "." line the end of data, so "\n.\r\n" is ordinary content
 * (stored as the line "."), and no second message can be smuggled.  A bare
 * CR is ordinary content.  With reject_bare_lf, any bare LF sets
 * SMTP_DATA_BARE_LF and the caller refuses the message.
 */
#define SMTP_DATA_BARE_LF   0x01    /* a line ended in bare LF */
#define SMTP_DATA_LONG_LINE 0x02    /* a line was longer than max_line */
#define SMTP_DATA_NUL       0x04    /* a NUL byte was seen */
#define SMTP_DATA_TOO_BIG   0x08    /* more than max_size bytes */

struct smtp_data_reader {
	size_t  max_line;       /* bytes of line content, not counting CR LF */
	size_t  max_size;       /* message bytes emitted at most; beyond: TOO_BIG, rest dropped */
	/* state */
	int     st;
	size_t  linelen;
	size_t  size;           /* bytes emitted (or that would have been) */
	unsigned flags;
	bool    prev_crlf;      /* the previous line ended in CRLF (or start of data) */
	bool    raw;            /* BDAT content: no dot handling, never "done";
	                         * bare LF still becomes CRLF, limits still apply */
};

typedef void (*smtp_emit_fn)(void *arg, const char *p, size_t len);

void   smtp_data_init(struct smtp_data_reader *, size_t max_line, size_t max_size);
/* returns bytes consumed; *done = true once the end of data was consumed */
size_t smtp_data_feed(struct smtp_data_reader *, const char *p, size_t len,
    smtp_emit_fn emit, void *arg, bool *done);

#endif
