/*
 * dsn.h - RFC 3464 delivery status notifications (multipart/report;
 * report-type=delivery-status) built in memory.  Pure code: no I/O, no
 * globals, so it is unit-tested (tests/unit/test_dsn.c) and the queue
 * manager runs it in a pool thread.
 * Input: recipient addresses, ENVID/ORCPT xtext and remote SMTP replies
 * are untrusted: every value is decoded, stripped of CR/LF/NUL and other
 * control bytes, and capped before it reaches a header field.
 */
#ifndef MOAT_DSN_H
#define MOAT_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "spool.h"

struct buf;

/* larger originals are returned as text/rfc822-headers only */
#define DSN_MAX_ORIGINAL   (1024 * 1024)
/* a header section longer than this is cut (at a line end) */
#define DSN_MAX_HEADERS    (64 * 1024)
/* per-recipient diagnostic text */
#define DSN_MAX_DIAG       1000

enum dsn_action { DSN_ACT_FAILED, DSN_ACT_DELAYED, DSN_ACT_DELIVERED, DSN_ACT_RELAYED,
	DSN_ACT_EXPANDED };

struct dsn_rcpt {
	const char *addr;               /* final recipient */
	const char *orcpt;              /* ORCPT as received ("rfc822;xtext") or NULL */
	enum dsn_action action;
	const char *status;             /* "5.1.1"; NULL: derived from reply/action */
	const char *remote_mta;         /* host name or address of the remote MTA, or NULL */
	const char *reply;              /* SMTP reply text ("550 5.1.1 no such user"), or NULL */
	const char *diag;               /* a local explanation when there is no SMTP reply, or NULL */
	time_t  last_attempt;           /* 0: omitted */
};

struct dsn_report {
	const char *hostname;           /* Reporting-MTA and MAILER-DAEMON@hostname */
	const char *qid;                /* original queue id (X-Moat-Queue-Id, text) */
	const char *sender;             /* the original envelope sender: To: of the DSN */
	const char *envid;              /* ENVID xtext as received, or NULL */
	enum dsn_ret ret;
	time_t  arrival;
	time_t  now;                    /* Date: */
	const char *boundary_seed;      /* unique text for the MIME boundary and Message-ID */
	const struct dsn_rcpt *rcpts;
	size_t  nrcpts;
};

/*
 * Build the whole DSN message (headers + body, CRLF line ends) into out.
 * orig/orig_len: the original message (or its first orig_len bytes);
 * orig_total: its full size.  The original is attached as message/rfc822
 * when RET=FULL or unspecified and orig_total <= DSN_MAX_ORIGINAL and the
 * whole message is in orig; otherwise its header section is attached as
 * text/rfc822-headers.  Returns 0, or -1 if there is nothing to report.
 */
int dsn_build(const struct dsn_report *, const char *orig, size_t orig_len, size_t orig_total,
    struct buf *out);

/*
 * The status code of an SMTP reply: the enhanced code if present and
 * consistent with the basic code ("550 5.1.1 x" -> "5.1.1"), else the class
 * with ".0.0".  Writes at most outsz bytes (>= 12); "" if reply is unusable.
 */
void dsn_status_of_reply(const char *reply, char *out, size_t outsz);

/*
 * Decode xtext (RFC 3461 4) into out (NUL-terminated, capped at outsz).
 * Bytes outside printable US-ASCII are kept as +HH.  Returns false if the
 * input is not well-formed xtext (out then holds a sanitized copy).
 */
bool dsn_xtext_decode(const char *in, char *out, size_t outsz);
/* encode into xtext (RFC 3461 4); capped at outsz; false if truncated */
bool dsn_xtext_encode(const char *in, char *out, size_t outsz);

const char *dsn_action_name(enum dsn_action);

#endif
