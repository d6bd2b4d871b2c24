/*
 * dsn.c - RFC 3464 delivery status notifications.
 *
 * Runs in: a pool thread of the worker (queue manager) and unit tests.
 * Pure: builds the message in a struct buf, no I/O, no globals.
 * Untrusted input: recipient addresses, ENVID/ORCPT xtext and the remote
 * server's reply text.  Every value is reduced to one line of printable
 * bytes (CR, LF, NUL and other controls become spaces), capped
 * (DSN_MAX_DIAG), and long header fields are folded at white space.  The
 * original message is attached whole only up to DSN_MAX_ORIGINAL bytes;
 * beyond that (or for RET=HDRS) only its header section, itself capped at
 * DSN_MAX_HEADERS.
 */
#include "config.h"
#include "dsn.h"
#include "buf.h"
#include "util.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#define DSN_ADDR_MAX 1100    /* addresses and ORCPT values, decoded */

const char *
dsn_action_name(enum dsn_action a)
{
	switch (a) {
	case DSN_ACT_FAILED:    return "failed";
	case DSN_ACT_DELAYED:   return "delayed";
	case DSN_ACT_DELIVERED: return "delivered";
	case DSN_ACT_RELAYED:   return "relayed";
	case DSN_ACT_EXPANDED:  return "expanded";
	}
	return "failed";
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;      /* xtext hex is upper case only (RFC 3461 4) */
}

bool
dsn_xtext_decode(const char *in, char *out, size_t outsz)
{
	static const char hex[] = "0123456789ABCDEF";
	bool good = true;
	size_t o = 0;

	if (outsz == 0)
		return false;
	for (size_t i = 0; in[i] != '\0'; i++) {
		unsigned char c = (unsigned char)in[i];
		char tmp[4];
		size_t n;

		if (c == '+') {
			int h = in[i + 1] ? hexval((unsigned char)in[i + 1]) : -1;
			int l = h >= 0 && in[i + 2] ? hexval((unsigned char)in[i + 2]) : -1;
			if (h < 0 || l < 0) {
				good = false;
				c = '?';
			} else {
				c = (unsigned char)(h * 16 + l);
				i += 2;
			}
			if (c < 0x21 || c > 0x7e) {
				/* keep non-printable bytes encoded */
				tmp[0] = '+'; tmp[1] = hex[c >> 4]; tmp[2] = hex[c & 15];
				n = 3;
			} else {
				tmp[0] = (char)c;
				n = 1;
			}
		} else if (c < 0x21 || c > 0x7e || c == '=') {
			good = false;
			tmp[0] = '?';
			n = 1;
		} else {
			tmp[0] = (char)c;
			n = 1;
		}
		if (o + n >= outsz) {
			out[o] = '\0';
			return false;
		}
		memcpy(out + o, tmp, n);
		o += n;
	}
	out[o] = '\0';
	return good;
}

bool
dsn_xtext_encode(const char *in, char *out, size_t outsz)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	if (outsz == 0)
		return false;
	for (size_t i = 0; in[i] != '\0'; i++) {
		unsigned char c = (unsigned char)in[i];
		size_t n = (c < 0x21 || c > 0x7e || c == '+' || c == '=') ? 3 : 1;
		if (o + n >= outsz) {
			out[o] = '\0';
			return false;
		}
		if (n == 1)
			out[o++] = (char)c;
		else {
			out[o++] = '+';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
	return true;
}

void
dsn_status_of_reply(const char *reply, char *out, size_t outsz)
{
	const char *p = reply;
	int cls;

	if (outsz < 12)
		return;
	out[0] = '\0';
	if (reply == NULL || !isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]) ||
	    !isdigit((unsigned char)p[2]) || (p[0] != '2' && p[0] != '4' && p[0] != '5'))
		return;
	cls = p[0] - '0';
	p += 3;
	if (*p == ' ' || *p == '-') {
		/* enhanced code: class "." 1*3digit "." 1*3digit, class matching the reply */
		const char *s = p + 1;
		size_t i = 0, n1 = 0, n2 = 0;
		if (s[0] - '0' == cls && s[1] == '.') {
			i = 2;
			while (isdigit((unsigned char)s[i]) && n1 < 4) { i++; n1++; }
			if (n1 >= 1 && n1 <= 3 && s[i] == '.') {
				i++;
				while (isdigit((unsigned char)s[i]) && n2 < 4) { i++; n2++; }
				if (n2 >= 1 && n2 <= 3 && (s[i] == '\0' || s[i] == ' ' ||
				    s[i] == '\r' || s[i] == '\n')) {
					memcpy(out, s, i);
					out[i] = '\0';
					return;
				}
			}
		}
	}
	snprintf(out, outsz, "%d.0.0", cls);
}

/* one printable line: controls -> space, runs of white space collapsed, capped */
static void
clean_line(const char *in, char *out, size_t outsz, bool ascii_only)
{
	size_t o = 0;
	bool sp = false;

	if (outsz == 0)
		return;
	for (size_t i = 0; in && in[i] != '\0'; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c < 0x20 || c == 0x7f || (ascii_only && c >= 0x80)) {
			if (c >= 0x80)
				c = '?';
			else
				c = ' ';
		}
		if (c == ' ') {
			if (sp || o == 0)
				continue;
			sp = true;
		} else
			sp = false;
		if (o + 1 >= outsz)
			break;
		out[o++] = (char)c;
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
}

/*
 * Append value folded at white space before 78 columns where possible
 * (col: the column value starts at); continuation lines start with cont.
 * Values are single lines (clean_line) capped well below 998 bytes.
 */
static void
add_folded(struct buf *b, size_t col, const char *value, const char *cont)
{
	size_t vl = strlen(value);
	const char *p = value;

	while (vl > 0) {
		size_t take = vl;
		if (col + vl > 78) {
			/* last space within the budget, else the first one after it */
			size_t lim = col < 78 ? 78 - col : 0;
			size_t cut = 0;
			for (size_t i = 1; i < vl && i <= lim; i++)
				if (p[i] == ' ')
					cut = i;
			if (cut == 0)
				for (size_t i = lim + 1; i < vl; i++)
					if (p[i] == ' ') {
						cut = i;
						break;
					}
			if (cut > 0)
				take = cut;
		}
		buf_add(b, p, take);
		p += take;
		vl -= take;
		if (vl > 0) {
			buf_adds(b, "\r\n");
			buf_adds(b, cont);
			col = strlen(cont);
			while (vl > 0 && *p == ' ') {
				p++;
				vl--;
			}
		}
	}
	buf_adds(b, "\r\n");
}

/* "Name: value" folded */
static void
add_field(struct buf *b, const char *name, const char *value)
{
	buf_printf(b, "%s: ", name);
	add_folded(b, strlen(name) + 2, value, "\t");
}

static bool
is_ascii(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80)
			return false;
	return true;
}

/* "rfc822;xtext" -> "rfc822; decoded" */
static void
orcpt_field(const char *orcpt, char *out, size_t outsz)
{
	char type[64], dec[DSN_ADDR_MAX];
	const char *semi = strchr(orcpt, ';');
	size_t tl;

	if (semi == NULL || semi == orcpt || (tl = (size_t)(semi - orcpt)) >= sizeof(type)) {
		clean_line(orcpt, out, outsz, true);
		return;
	}
	memcpy(type, orcpt, tl);
	type[tl] = '\0';
	for (size_t i = 0; i < tl; i++)
		if (!isalnum((unsigned char)type[i]) && type[i] != '-')
			type[i] = '-';
	dsn_xtext_decode(semi + 1, dec, sizeof(dec));
	snprintf(out, outsz, "%s; %s", type, dec);
}

static const char *
subject_for(const struct dsn_report *r)
{
	bool failed = false, delayed = false;

	for (size_t i = 0; i < r->nrcpts; i++) {
		if (r->rcpts[i].action == DSN_ACT_FAILED)
			failed = true;
		else if (r->rcpts[i].action == DSN_ACT_DELAYED)
			delayed = true;
	}
	if (failed)
		return "Undelivered Mail Returned to Sender";
	if (delayed)
		return "Delayed Mail (still being retried)";
	return "Successful Mail Delivery Report";
}

static bool
has_8bit(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] >= 0x80)
			return true;
	return false;
}

/* length of the header section (through the CRLF ending the last header
 * line, without the empty line); capped at the last line end before cap */
static size_t
header_len(const char *p, size_t n, size_t cap)
{
	size_t lim = n < cap ? n : cap, last = 0;

	for (size_t i = 0; i < lim; i++) {
		if (p[i] != '\n')
			continue;
		/* empty line: "\n\r\n" or "\n\n" or the message starting with one */
		size_t ls = last;
		if (i == ls || (i == ls + 1 && p[ls] == '\r'))
			return ls;
		last = i + 1;
	}
	return last;
}

int
dsn_build(const struct dsn_report *r, const char *orig, size_t orig_len, size_t orig_total,
    struct buf *out)
{
	char date[64], bnd[80], line[DSN_MAX_DIAG + 64], val[DSN_ADDR_MAX + DSN_MAX_DIAG + 64];
	char addr[DSN_ADDR_MAX], host[256], seed[96];
	bool any_failed = false, full;
	size_t hl;

	if (r->nrcpts == 0)
		return -1;
	if (orig == NULL)
		orig_len = orig_total = 0;
	clean_line(r->hostname, host, sizeof(host), true);
	for (char *c = host; *c; c++)
		if (*c == ' ')
			*c = '-';
	clean_line(r->boundary_seed ? r->boundary_seed : r->qid, seed, sizeof(seed), true);
	for (char *c = seed; *c; c++)
		if (!isalnum((unsigned char)*c) && *c != '.')
			*c = '.';
	/* a boundary that does not occur in what we attach */
	for (unsigned n = 0;; n++) {
		if (n == 0)
			snprintf(bnd, sizeof(bnd), "%.32s/%.30s", seed, host);
		else
			snprintf(bnd, sizeof(bnd), "%.32s/%.30s/%u", seed, host, n);
		if (orig_len == 0 || memmem(orig, orig_len, bnd, strlen(bnd)) == NULL)
			break;
		if (n > 1000)
			return -1;
	}
	for (size_t i = 0; i < r->nrcpts; i++)
		if (r->rcpts[i].action == DSN_ACT_FAILED)
			any_failed = true;

	full = (r->ret == DSN_RET_FULL || r->ret == DSN_RET_UNSPEC) &&
	    orig_total <= DSN_MAX_ORIGINAL && orig_len >= orig_total;

	/* ---- top-level header ---- */
	rfc5322_date(r->now, date, sizeof(date));
	snprintf(val, sizeof(val), "Mail Delivery System <MAILER-DAEMON@%s>", host);
	add_field(out, "From", val);
	clean_line(r->sender, addr, sizeof(addr), false);
	snprintf(val, sizeof(val), "<%s>", addr);
	add_field(out, "To", val);
	add_field(out, "Subject", subject_for(r));
	add_field(out, "Date", date);
	snprintf(val, sizeof(val), "<%s@%s>", seed, host);
	add_field(out, "Message-ID", val);
	add_field(out, "Auto-Submitted", "auto-replied");
	add_field(out, "MIME-Version", "1.0");
	snprintf(val, sizeof(val), "multipart/report; report-type=delivery-status; boundary=\"%s\"", bnd);
	add_field(out, "Content-Type", val);
	if (has_8bit(orig, full ? orig_len : header_len(orig, orig_len, DSN_MAX_HEADERS)) ||
	    !is_ascii(r->sender))
		add_field(out, "Content-Transfer-Encoding", "8bit");
	buf_adds(out, "\r\nThis is a MIME-encapsulated message.\r\n\r\n");

	/* ---- human readable part ---- */
	buf_printf(out, "--%s\r\n", bnd);
	buf_adds(out, "Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
	buf_printf(out, "This is the mail system at host %s.\r\n\r\n", host);
	if (any_failed)
		buf_adds(out, "I'm sorry to have to inform you that your message could not\r\n"
		    "be delivered to one or more recipients. It's attached below.\r\n\r\n"
		    "For further assistance, please send mail to postmaster.\r\n\r\n"
		    "If you do so, please include this problem report. You can\r\n"
		    "delete your own text from the attached returned message.\r\n\r\n");
	else if (!strcmp(subject_for(r), "Delayed Mail (still being retried)"))
		buf_adds(out, "Your message could not be delivered yet. The mail system\r\n"
		    "will keep trying; you do not need to resend it.\r\n\r\n");
	else
		buf_adds(out, "Your message was successfully delivered to the destination(s)\r\n"
		    "listed below. If the message was delivered to mailbox you will\r\n"
		    "receive no further notifications. Otherwise you may still receive\r\n"
		    "notifications of mail delivery errors from other systems.\r\n\r\n");
	for (size_t i = 0; i < r->nrcpts; i++) {
		const struct dsn_rcpt *rc = &r->rcpts[i];
		char why[DSN_MAX_DIAG + 1], mta[256];
		struct buf t = BUF_INIT;
		clean_line(rc->addr, addr, sizeof(addr), false);
		clean_line(rc->reply ? rc->reply : rc->diag ? rc->diag : dsn_action_name(rc->action),
		    why, sizeof(why), false);
		if (rc->remote_mta && rc->reply) {
			clean_line(rc->remote_mta, mta, sizeof(mta), true);
			buf_printf(&t, "<%s>: %s (host %s said: %s)", addr,
			    dsn_action_name(rc->action), mta, why);
		} else
			buf_printf(&t, "<%s>: %s: %s", addr, dsn_action_name(rc->action), why);
		add_folded(out, 0, t.data, "    ");
		buf_adds(out, "\r\n");
		buf_free(&t);
	}

	/* ---- message/delivery-status ---- */
	buf_printf(out, "--%s\r\n", bnd);
	buf_adds(out, "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n");
	snprintf(val, sizeof(val), "dns; %s", host);
	add_field(out, "Reporting-MTA", val);
	if (r->qid) {
		clean_line(r->qid, val, sizeof(val), true);
		add_field(out, "X-Moat-Queue-ID", val);
	}
	if (r->envid && r->envid[0]) {
		dsn_xtext_decode(r->envid, val, sizeof(val));
		add_field(out, "Original-Envelope-Id", val);
	}
	if (r->arrival) {
		rfc5322_date(r->arrival, date, sizeof(date));
		add_field(out, "Arrival-Date", date);
	}
	for (size_t i = 0; i < r->nrcpts; i++) {
		const struct dsn_rcpt *rc = &r->rcpts[i];
		char st[16];

		buf_adds(out, "\r\n");
		clean_line(rc->addr, addr, sizeof(addr), false);
		snprintf(val, sizeof(val), "%s; %s", is_ascii(addr) ? "rfc822" : "utf-8", addr);
		add_field(out, "Final-Recipient", val);
		if (rc->orcpt && rc->orcpt[0]) {
			orcpt_field(rc->orcpt, val, sizeof(val));
			add_field(out, "Original-Recipient", val);
		}
		add_field(out, "Action", dsn_action_name(rc->action));
		st[0] = '\0';
		if (rc->status)
			clean_line(rc->status, st, sizeof(st), true);
		if (st[0] == '\0' && rc->reply)
			dsn_status_of_reply(rc->reply, st, sizeof(st));
		if (st[0] == '\0')
			moat_strlcpy(st, rc->action == DSN_ACT_FAILED ? "5.0.0" :
			    rc->action == DSN_ACT_DELAYED ? "4.0.0" : "2.0.0", sizeof(st));
		add_field(out, "Status", st);
		if (rc->remote_mta && rc->remote_mta[0]) {
			char mta[256];
			clean_line(rc->remote_mta, mta, sizeof(mta), true);
			snprintf(val, sizeof(val), "dns; %s", mta);
			add_field(out, "Remote-MTA", val);
		}
		if (rc->reply && rc->reply[0]) {
			char why[DSN_MAX_DIAG + 1];
			clean_line(rc->reply, why, sizeof(why), false);
			snprintf(line, sizeof(line), "smtp; %s", why);
			add_field(out, "Diagnostic-Code", line);
		} else if (rc->diag && rc->diag[0]) {
			char why[DSN_MAX_DIAG + 1];
			clean_line(rc->diag, why, sizeof(why), false);
			snprintf(line, sizeof(line), "X-moat; %s", why);
			add_field(out, "Diagnostic-Code", line);
		}
		if (rc->last_attempt) {
			rfc5322_date(rc->last_attempt, date, sizeof(date));
			add_field(out, "Last-Attempt-Date", date);
		}
	}
	buf_adds(out, "\r\n");

	/* ---- the original ---- */
	if (orig_len > 0) {
		buf_printf(out, "--%s\r\n", bnd);
		if (full) {
			buf_adds(out, any_failed ? "Content-Description: Undelivered Message\r\n" :
			    "Content-Description: Message\r\n");
			buf_adds(out, "Content-Type: message/rfc822\r\n");
			if (has_8bit(orig, orig_len))
				buf_adds(out, "Content-Transfer-Encoding: 8bit\r\n");
			buf_adds(out, "\r\n");
			buf_add(out, orig, orig_len);
			if (orig_len < 2 || orig[orig_len - 2] != '\r' || orig[orig_len - 1] != '\n')
				buf_adds(out, "\r\n");
		} else {
			hl = header_len(orig, orig_len, DSN_MAX_HEADERS);
			buf_adds(out, "Content-Description: Undelivered Message Headers\r\n"
			    "Content-Type: text/rfc822-headers\r\n");
			if (has_8bit(orig, hl))
				buf_adds(out, "Content-Transfer-Encoding: 8bit\r\n");
			buf_adds(out, "\r\n");
			buf_add(out, orig, hl);
			if (hl < 2 || orig[hl - 2] != '\r' || orig[hl - 1] != '\n')
				buf_adds(out, "\r\n");
		}
		buf_adds(out, "\r\n");
	}
	buf_printf(out, "--%s--\r\n", bnd);
	return 0;
}
