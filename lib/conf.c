/*
 * conf.c - moat.conf parser.
 *
 * Grammar: one directive per line, words separated by blanks, "#" starts a
 * comment outside quotes, double quotes group words (\" and \\ escape).
 * Scalar settings come from one typed table (name, type, default, bounds);
 * the structured directives (listen, domain, limit-exempt) have their own
 * parsers.  Every error is reported as FILE:LINE: message, all in one pass.
 * Runs in: the master (and the moat CLI).  Input: the admin's file (trusted,
 * but checked strictly so mistakes are caught before anything starts).
 */
#include "config.h"
#include "conf.h"
#include "buf.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/un.h>

const char conf_embedded_default[] =
	"# moat embedded default: all-in-one, unprivileged ports, ./var\n"
	"state-dir ./var\n"
	"listen smtp 127.0.0.1:2525\n"
	"domain localhost deliver store\n";

enum ctype { CT_INT, CT_SIZE, CT_DURATION, CT_STRING, CT_BOOL };

struct setting {
	const char *name;
	enum ctype  type;
	size_t      off;
	const char *def;
	long long   min, max;
};

#define OFF(f) offsetof(struct moat_conf, f)
static const struct setting settings[] = {
	{ "hostname",               CT_STRING,   OFF(hostname), NULL, 0, 0 },
	{ "user",                   CT_STRING,   OFF(user), NULL, 0, 0 },
	{ "pid-file",               CT_STRING,   OFF(pid_file), NULL, 0, 0 },
	{ "threads",                CT_INT,      OFF(threads), "8", 1, 256 },
	{ "smtp-banner",            CT_STRING,   OFF(smtp_banner), "ESMTP moat", 0, 0 },
	{ "smtp-max-line",          CT_SIZE,     OFF(smtp_max_line), "2048", 512, 65536 },
	{ "smtp-max-data-line",     CT_SIZE,     OFF(smtp_max_data_line), "32768", 1000, 1048576 },
	{ "message-size-limit",     CT_SIZE,     OFF(message_size_limit), "50M", 1024, 2147483647LL },
	{ "smtp-max-recipients",    CT_INT,      OFF(smtp_max_rcpts), "1000", 1, 100000 },
	{ "smtp-max-messages",      CT_INT,      OFF(smtp_max_messages), "1000", 1, 1000000 },
	{ "smtp-max-bad-commands",  CT_INT,      OFF(smtp_max_bad_commands), "20", 1, 1000 },
	{ "smtp-max-received",      CT_INT,      OFF(smtp_max_received), "50", 5, 1000 },
	{ "smtp-timeout",           CT_DURATION, OFF(smtp_timeout), "300", 1, 86400 },
	{ "smtp-data-timeout",      CT_DURATION, OFF(smtp_data_timeout), "300", 1, 86400 },
	{ "smtp-stress-timeout",    CT_DURATION, OFF(smtp_stress_timeout), "10", 1, 86400 },
	{ "smtp-max-sessions",      CT_INT,      OFF(smtp_max_sessions), "2000", 1, 1000000 },
	{ "smtp-max-sessions-per-ip", CT_INT,    OFF(smtp_max_sessions_per_ip), "50", 1, 1000000 },
	{ "smtp-max-header-size",   CT_SIZE,     OFF(smtp_max_header_size), "256k", 1024, 67108864 },
	{ "recipient-delimiter",    CT_STRING,   OFF(recipient_delimiter), "+", 0, 0 },
	{ "queue-retry-min",        CT_DURATION, OFF(queue_retry_min), "60", 1, 86400 },
	{ "queue-retry-max",        CT_DURATION, OFF(queue_retry_max), "3600", 1, 604800 },
	{ "queue-lifetime",         CT_DURATION, OFF(queue_lifetime), "5d", 0, 31536000 },
	{ "bounce-lifetime",        CT_DURATION, OFF(bounce_lifetime), "5d", 0, 31536000 },
	{ "queue-scan-interval",    CT_DURATION, OFF(queue_scan_interval), "60", 1, 86400 },
	{ "relay-concurrency",      CT_INT,      OFF(relay_concurrency), "20", 1, 10000 },
	{ "relay-connect-timeout",  CT_DURATION, OFF(relay_connect_timeout), "30", 1, 3600 },
	{ "relay-command-timeout",  CT_DURATION, OFF(relay_command_timeout), "300", 1, 3600 },
	{ "relay-data-timeout",     CT_DURATION, OFF(relay_data_timeout), "600", 1, 7200 },
	{ "relay-max-messages-per-connection", CT_INT, OFF(relay_max_messages_per_connection), "1000", 1, 1000000 },
	{ "postmaster",             CT_STRING,   OFF(postmaster), NULL, 0, 0 },
	{ "auth-allow-plaintext",   CT_BOOL,     OFF(auth_allow_plaintext), "no", 0, 0 },
	{ "submission-sender-check", CT_BOOL,    OFF(submission_sender_check), "yes", 0, 0 },
	{ "submission-hide-client", CT_BOOL,     OFF(submission_hide_client), "no", 0, 0 },
	{ "auth-max-failures",      CT_INT,      OFF(auth_max_failures), "10", 1, 100000 },
	{ "attachment-policy",      CT_BOOL,     OFF(attachment_policy), "yes", 0, 0 },
	{ "bayes",                  CT_BOOL,     OFF(bayes), "yes", 0, 0 },
	{ "store-spam-to-junk",     CT_BOOL,     OFF(store_junk), "yes", 0, 0 },
	{ "tag-subject-prefix",     CT_STRING,   OFF(tag_subject_prefix), NULL, 0, 0 },
	{ "lists",                  CT_STRING,   OFF(lists_dir), NULL, 0, 0 },
	{ "quarantine-retention",   CT_DURATION, OFF(quarantine_retention), "30d", 0, 315360000 },
	{ "quarantine-max-size",    CT_SIZE,     OFF(quarantine_max_size), "1G", 0, 1099511627776LL },
	{ "quarantine-digest",      CT_DURATION, OFF(quarantine_digest), "0", 0, 31536000 },
	{ "quarantine-maintenance-interval", CT_DURATION, OFF(quarantine_maintenance), "1h", 1, 86400 },
	{ "auth-failure-window",    CT_DURATION, OFF(auth_failure_window), "15m", 1, 86400 },
	{ "auth-block-time",        CT_DURATION, OFF(auth_block_time), "10m", 1, 86400 },
	{ "resolver",               CT_STRING,   OFF(resolver), NULL, 0, 0 },
	{ "resolver-timeout",       CT_DURATION, OFF(resolver_timeout), "5", 1, 60 },
	{ "authserv-id",            CT_STRING,   OFF(authserv_id), NULL, 0, 0 },
	/* -- dnsbl.c, helo.c -- */
	{ "helo-checks",            CT_BOOL,     OFF(helo_checks), "yes", 0, 0 },

	/* -- spf.c -- */
	{ "spf",                    CT_BOOL,     OFF(spf), "yes", 0, 0 },

	/* -- dkim.c, dmarc.c -- */
	{ "dkim",                   CT_BOOL,     OFF(dkim), "yes", 0, 0 },
	{ "dkim-min-key-bits",      CT_INT,      OFF(dkim_min_key_bits), "1024", 512, 16384 },
	{ "dmarc",                  CT_BOOL,     OFF(dmarc), "yes", 0, 0 },

	/* -- geoip.c, greylist.c -- */
	{ "greylist",               CT_BOOL,     OFF(greylist), "no", 0, 0 },
	{ "greylist-delay",         CT_DURATION, OFF(greylist_delay), "5m", 1, 21600 },
	{ "greylist-expire",        CT_DURATION, OFF(greylist_expire), "2d", 43200, 2592000 },
	{ "greylist-allow-time",    CT_DURATION, OFF(greylist_allow_time), "35d", 86400, 31536000 },
	{ "greylist-auto-allow-clients", CT_INT, OFF(greylist_auto_clients), "5", 0, 1000000 },
	{ "smtp-pregreet-wait",     CT_DURATION, OFF(smtp_pregreet_wait), "0", 0, 60 },

	/* -- milter (#9) -- */
	{ "milter-subject-prefix",  CT_STRING,   OFF(milter_subject_prefix), NULL, 0, 0 },
	/* -- operations (#10) -- */
	{ "http-token",             CT_STRING,   OFF(http_token), NULL, 0, 0 },
	{ "journal",                CT_BOOL,     OFF(journal), "yes", 0, 0 },
	{ "journal-retention",      CT_DURATION, OFF(journal_retention), "30d", 3600, 315360000 },
	{ "log-json",               CT_STRING,   OFF(log_json), NULL, 0, 0 },
	{ "alert-interval",         CT_DURATION, OFF(alert_interval), "60", 1, 86400 },
	{ "alert-queue-size",       CT_INT,      OFF(alert_queue_size), "0", 0, 100000000 },
	{ "alert-queue-age",        CT_DURATION, OFF(alert_queue_age), "0", 0, 31536000 },
	{ "alert-deferral-rate",    CT_INT,      OFF(alert_deferral_rate), "0", 0, 100 },
	{ "alert-deferral-min",     CT_INT,      OFF(alert_deferral_min), "20", 1, 100000000 },
	{ "alert-disk-free",        CT_SIZE,     OFF(alert_disk_free), "0", 0, 1125899906842624LL },
	{ "alert-av-age",           CT_DURATION, OFF(alert_av_age), "0", 0, 31536000 },
	{ "alert-worker-restarts",  CT_INT,      OFF(alert_worker_restarts), "0", 0, 1000000 },
	{ "alert-email",            CT_BOOL,     OFF(alert_email), "no", 0, 0 },
};

struct pending_action {                 /* "action X N domain D": resolved in finish() */
	char   *domain;
	int     which;                  /* 0 tag, 1 quarantine, 2 reject */
	double  v;
	const char *file;
	int     line;
};

struct parser {
	const char *file;
	int         line;
	struct pending_action *pa;
	size_t      npa;
	struct buf *errs;
	int         nerr;
	struct moat_conf *c;
	unsigned char seen[ARRAY_SIZE(settings)];
};

static void perr(struct parser *, const char *, ...) LOGFMT(2, 3);

static void
perr(struct parser *p, const char *fmt, ...)
{
	va_list ap;
	char msg[1024];

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	buf_printf(p->errs, "%s:%d: %s\n", p->file, p->line, msg);
	p->nerr++;
}

const char *
listen_kind_name(enum listen_kind k)
{
	static const char *n[] = { "smtp", "submission", "smtps", "imap", "imaps",
	    "pop3", "pop3s", "milter", "http" };
	return k < ARRAY_SIZE(n) ? n[k] : "?";
}

/* split a line into words; returns count or -1 (error reported) */
#define MAXWORDS 64
static int
tokenize(struct parser *p, char *s, char **w)
{
	int n = 0;
	char *o;

	for (;;) {
		while (*s == ' ' || *s == '\t' || *s == '\r')
			s++;
		if (*s == '\0' || *s == '#' || *s == '\n')
			return n;
		if (n == MAXWORDS) {
			perr(p, "too many words on one line (at most %d)", MAXWORDS);
			return -1;
		}
		w[n++] = o = s;
		if (*s == '"') {
			s++;
			for (;;) {
				if (*s == '\0' || *s == '\n') {
					perr(p, "unterminated quoted string");
					return -1;
				}
				if (*s == '"') {
					s++;
					break;
				}
				if (*s == '\\' && (s[1] == '"' || s[1] == '\\'))
					s++;
				*o++ = *s++;
			}
			if (*s != '\0' && *s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') {
				perr(p, "text directly after a closing quote");
				return -1;
			}
			if (*s)
				s++;
			*o = '\0';
		} else {
			while (*s && *s != ' ' && *s != '\t' && *s != '\r' && *s != '\n')
				s++;
			if (*s)
				*s++ = '\0';
		}
	}
}

static bool
set_scalar(struct parser *p, const struct setting *st, const char *v, struct moat_conf *c)
{
	long long x = 0;
	char *base = (char *)c;

	switch (st->type) {
	case CT_STRING: {
		char **sp = (char **)(base + st->off);
		free(*sp);
		*sp = xstrdup(v);
		return true;
	}
	case CT_BOOL: {
		bool *bp = (bool *)(base + st->off);
		if (!strcmp(v, "yes") || !strcmp(v, "on") || !strcmp(v, "true"))
			*bp = true;
		else if (!strcmp(v, "no") || !strcmp(v, "off") || !strcmp(v, "false"))
			*bp = false;
		else {
			perr(p, "%s: expected yes or no, not \"%s\"", st->name, esc(v));
			return false;
		}
		return true;
	}
	case CT_INT:
		if (!parse_ll(v, st->min, st->max, &x)) {
			perr(p, "%s: expected a whole number from %lld to %lld, not \"%s\"",
			    st->name, st->min, st->max, esc(v));
			return false;
		}
		break;
	case CT_SIZE:
		x = parse_size(v);
		if (x < st->min || x > st->max) {
			perr(p, "%s: expected a size from %lld to %lld bytes (suffix k, M or G allowed), not \"%s\"",
			    st->name, st->min, st->max, esc(v));
			return false;
		}
		break;
	case CT_DURATION:
		x = parse_duration(v);
		if (x < st->min || x > st->max) {
			perr(p, "%s: expected a duration from %llds to %llds (suffix s, m, h, d or w allowed), not \"%s\"",
			    st->name, st->min, st->max, esc(v));
			return false;
		}
		break;
	}
	if (st->type == CT_INT && st->off == OFF(threads))
		*(int *)(base + st->off) = (int)x;
	else
		*(long long *)(base + st->off) = x;
	return true;
}

static bool
parse_hostport(const char *spec, const char *defport, char **host, char **port)
{
	const char *colon;

	if (spec[0] == '[') {
		const char *rb = strchr(spec, ']');
		if (rb == NULL)
			return false;
		*host = xstrndup(spec + 1, (size_t)(rb - spec - 1));
		if (rb[1] == ':' && rb[2])
			*port = xstrdup(rb + 2);
		else if (rb[1] == '\0' && defport)
			*port = xstrdup(defport);
		else {
			xfree(*host);
			return false;
		}
		return true;
	}
	colon = strrchr(spec, ':');
	if (colon == NULL || strchr(spec, ':') != colon) {
		if (colon != NULL || defport == NULL)
			return false;
		*host = xstrdup(spec);
		*port = xstrdup(defport);
		return true;
	}
	if (colon == spec || colon[1] == '\0')
		return false;
	*host = xstrndup(spec, (size_t)(colon - spec));
	*port = xstrdup(colon + 1);
	return true;
}

static bool
valid_port(const char *s)
{
	long long v;
	return parse_ll(s, 1, 65535, &v);
}

static bool milter_listen_parse(struct parser *, int, char **, struct listen_conf *);

static void
d_listen(struct parser *p, int n, char **w)
{
	static const struct { const char *name; enum listen_kind k; } kinds[] = {
		{ "smtp", LISTEN_SMTP }, { "submission", LISTEN_SUBMISSION },
		{ "smtps", LISTEN_SMTPS }, { "imap", LISTEN_IMAP }, { "imaps", LISTEN_IMAPS },
		{ "pop3", LISTEN_POP3 }, { "pop3s", LISTEN_POP3S }, { "milter", LISTEN_MILTER },
		{ "http", LISTEN_HTTP },
	};
	struct listen_conf l;
	struct addrinfo hints, *res = NULL;
	char *host = NULL, *port = NULL;
	size_t i;
	int r;

	memset(&l, 0, sizeof(l));
	l.fd = -1;
	l.file = p->file;
	l.line = p->line;
	if (n < 3) {
		perr(p, "listen: expected \"listen KIND ADDRESS:PORT [options]\"");
		return;
	}
	for (i = 0; i < ARRAY_SIZE(kinds); i++)
		if (!strcmp(w[1], kinds[i].name))
			break;
	if (i == ARRAY_SIZE(kinds)) {
		perr(p, "listen: unknown listener kind \"%s\" (smtp, submission, smtps, imap, imaps, pop3, pop3s, milter, http)",
		    esc(w[1]));
		return;
	}
	l.kind = kinds[i].k;
	/* tls/auth defaults are settled in finish(), once the certificates are known */

	for (int a = 3; a < n; a++) {
		if (!strncmp(w[a], "tls=", 4)) {
			const char *v = w[a] + 4;
			l.tls_set = true;
			if (!strcmp(v, "none")) l.tls = TLS_NONE;
			else if (!strcmp(v, "starttls")) l.tls = TLS_STARTTLS;
			else if (!strcmp(v, "implicit")) l.tls = TLS_IMPLICIT;
			else perr(p, "listen: tls= takes none, starttls or implicit, not \"%s\"", esc(v));
		} else if (!strncmp(w[a], "auth=", 5)) {
			const char *v = w[a] + 5;
			l.auth_set = true;
			if (!strcmp(v, "none")) l.auth = AUTH_NONE;
			else if (!strcmp(v, "optional")) l.auth = AUTH_OPTIONAL;
			else if (!strcmp(v, "required")) l.auth = AUTH_REQUIRED;
			else perr(p, "listen: auth= takes none, optional or required, not \"%s\"", esc(v));
		} else if (!strncmp(w[a], "allow=", 6) || !strncmp(w[a], "deny=", 5)) {
			bool allow = w[a][0] == 'a';
			char *list = xstrdup(w[a] + (allow ? 6 : 5)), *save = NULL;
			for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
				struct cidr cd;
				if (!cidr_parse(tok, &cd)) {
					perr(p, "listen: %s: \"%s\" is not an address or CIDR",
					    allow ? "allow" : "deny", esc(tok));
					continue;
				}
				struct cidr **arr = allow ? &l.allow : &l.deny;
				size_t *cnt = allow ? &l.nallow : &l.ndeny;
				*arr = xreallocarray(*arr, *cnt + 1, sizeof(cd));
				(*arr)[(*cnt)++] = cd;
			}
			free(list);
		} else
			perr(p, "listen: unknown option \"%s\" (tls=, auth=, allow=, deny=)", esc(w[a]));
	}
	if (l.kind == LISTEN_HTTP && (l.tls_set || l.auth_set)) {   /* operations (#10) */
		perr(p, "listen http: tls= and auth= do not apply (plain HTTP; see http-token)");
		goto out;
	}
	if (l.kind == LISTEN_MILTER) {
		/* -- milter (#9): listen milter ADDR:PORT | unix:PATH -- */
		if (!milter_listen_parse(p, n, w, &l))
			goto out;
		goto add;
	}
	if (!parse_hostport(w[2], NULL, &host, &port) || !valid_port(port)) {
		perr(p, "listen: \"%s\" is not ADDRESS:PORT (IPv6 as [::1]:25)", esc(w[2]));
		goto out;
	}
	if (!strcmp(host, "*"))
		host[0] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
	hints.ai_socktype = SOCK_STREAM;
	r = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
	if (r != 0 || res == NULL) {
		perr(p, "listen: \"%s\" is not a numeric IP address (use 0.0.0.0, ::, or a local address)",
		    esc(host));
		goto out;
	}
	memcpy(&l.ss, res->ai_addr, res->ai_addrlen);
	l.sslen = res->ai_addrlen;
	freeaddrinfo(res);
	for (i = 0; i < p->c->nlistens; i++) {
		struct listen_conf *o = &p->c->listens[i];
		if (o->sslen == l.sslen && !memcmp(&o->ss, &l.ss, l.sslen)) {
			perr(p, "listen: %s is already used by the listener at line %d", w[2], o->line);
			goto out;
		}
	}
	l.spec = xstrdup(w[2]);
add:
	p->c->listens = xreallocarray(p->c->listens, p->c->nlistens + 1, sizeof(l));
	p->c->listens[p->c->nlistens++] = l;
	l.allow = l.deny = NULL;        /* now owned by the config */
out:
	free(l.allow);
	free(l.deny);
	free(host);
	free(port);
}

static bool
valid_domain(const char *d)
{
	size_t len = strlen(d), lab = 0;
	if (len == 0 || len > 253)
		return false;
	for (const char *s = d; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '.') {
			if (lab == 0)
				return false;
			lab = 0;
			continue;
		}
		if (!(c == '-' || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
		    (c >= 'A' && c <= 'Z') || c >= 0x80))
			return false;
		if (++lab > 63)
			return false;
	}
	return lab > 0;
}

static bool
parse_relay(struct parser *p, const char *url, struct relay_dest *r)
{
	const char *rest;
	const char *defport;

	memset(r, 0, sizeof(*r));
	if (!strncmp(url, "smtp://", 7)) {
		r->proto = RELAY_SMTP; rest = url + 7; defport = "25";
	} else if (!strncmp(url, "lmtp://", 7)) {
		r->proto = RELAY_LMTP; rest = url + 7; defport = "24";
	} else if (!strncmp(url, "lmtp:unix:", 10) || !strncmp(url, "smtp:unix:", 10)) {
		r->proto = url[0] == 'l' ? RELAY_LMTP : RELAY_SMTP;
		if (url[10] != '/') {
			perr(p, "deliver relay: unix socket path must be absolute in \"%s\"", esc(url));
			return false;
		}
		r->unix_path = xstrdup(url + 10);
		r->name = xstrdup(url);
		return true;
	} else {
		perr(p, "deliver relay: \"%s\" is not smtp://HOST[:PORT], lmtp://HOST[:PORT] or lmtp:unix:/PATH",
		    esc(url));
		return false;
	}
	while (rest[0] && rest[strlen(rest) - 1] == '/')
		break;
	char *tmp = xstrdup(rest);
	size_t tl = strlen(tmp);
	if (tl && tmp[tl - 1] == '/')
		tmp[tl - 1] = '\0';
	if (!parse_hostport(tmp, defport, &r->host, &r->port) || !valid_port(r->port) ||
	    r->host[0] == '\0') {
		perr(p, "deliver relay: bad host or port in \"%s\"", esc(url));
		free(tmp);
		free(r->host);
		free(r->port);
		memset(r, 0, sizeof(*r));
		return false;
	}
	free(tmp);
	struct buf b = BUF_INIT;
	if (strchr(r->host, ':'))
		buf_printf(&b, "%s://[%s]:%s", r->proto == RELAY_LMTP ? "lmtp" : "smtp", r->host, r->port);
	else
		buf_printf(&b, "%s://%s:%s", r->proto == RELAY_LMTP ? "lmtp" : "smtp", r->host, r->port);
	r->name = buf_steal(&b);
	return true;
}

static void
d_domain(struct parser *p, int n, char **w)
{
	struct domain_conf d;

	memset(&d, 0, sizeof(d));
	if (n < 4 || strcmp(w[2], "deliver") != 0) {
		perr(p, "domain: expected \"domain NAME deliver store\" or \"domain NAME deliver relay URL\"");
		return;
	}
	if (!valid_domain(w[1])) {
		perr(p, "domain: \"%s\" is not a valid domain name", esc(w[1]));
		return;
	}
	if (!strcmp(w[3], "store")) {
		if (n != 4) {
			perr(p, "domain: unexpected words after \"deliver store\"");
			return;
		}
		d.deliver = DELIVER_STORE;
	} else if (!strcmp(w[3], "relay")) {
		if (n < 5) {
			perr(p, "domain: \"deliver relay\" takes a URL (smtp://HOST:PORT or lmtp://HOST:PORT)");
			return;
		}
		if (!parse_relay(p, w[4], &d.relay))
			return;
		d.relay.tls = d.relay.unix_path ? RTLS_NONE : RTLS_OPPORTUNISTIC;
		for (int a = 5; a < n; a++) {
			if (!strcmp(w[a], "tls=none")) d.relay.tls = RTLS_NONE;
			else if (!strcmp(w[a], "tls=opportunistic")) d.relay.tls = RTLS_OPPORTUNISTIC;
			else if (!strcmp(w[a], "tls=required")) d.relay.tls = RTLS_REQUIRED;
			else if (!strcmp(w[a], "tls=verify")) d.relay.tls = RTLS_VERIFY;
			else if (!strncmp(w[a], "ca=", 3) && w[a][3]) {
				free(d.relay.ca_file);
				d.relay.ca_file = xstrdup(w[a] + 3);
				if (access(d.relay.ca_file, R_OK) < 0)
					perr(p, "domain: cannot read CA file %s: %s", esc(d.relay.ca_file),
					    strerror(errno));
			} else
				perr(p, "domain: unknown relay option \"%s\" (tls=none|opportunistic|required|verify, ca=FILE)",
				    esc(w[a]));
		}
		if (d.relay.unix_path && d.relay.tls != RTLS_NONE && d.relay.tls != RTLS_OPPORTUNISTIC)
			perr(p, "domain: TLS over a unix socket makes no sense");
		/* the destination key includes a non-default TLS policy: two
		 * domains relaying to one host with different policies are two
		 * destinations */
		if (!d.relay.unix_path && (d.relay.tls != RTLS_OPPORTUNISTIC || d.relay.ca_file)) {
			static const char *names[] = { "none", "opportunistic", "required", "verify" };
			struct buf nb = BUF_INIT;
			buf_printf(&nb, "%s tls=%s", d.relay.name, names[d.relay.tls]);
			if (d.relay.ca_file)
				buf_printf(&nb, " ca=%s", d.relay.ca_file);
			free(d.relay.name);
			d.relay.name = buf_steal(&nb);
		}
		d.deliver = DELIVER_RELAY;
	} else {
		perr(p, "domain: deliver takes \"store\" or \"relay URL\", not \"%s\"", esc(w[3]));
		return;
	}
	d.name = xstrdup(w[1]);
	ascii_lower(d.name);
	size_t l = strlen(d.name);
	if (d.name[l - 1] == '.')
		d.name[l - 1] = '\0';
	if (conf_find_domain(p->c, d.name)) {
		perr(p, "domain: %s is configured twice", d.name);
		free(d.name);
		free(d.relay.host); free(d.relay.port); free(d.relay.unix_path); free(d.relay.name);
		free(d.relay.ca_file);
		return;
	}
	p->c->domains = xreallocarray(p->c->domains, p->c->ndomains + 1, sizeof(d));
	p->c->domains[p->c->ndomains++] = d;
}

bool
cidr_parse(const char *s, struct cidr *c)
{
	char tmp[INET6_ADDRSTRLEN + 8];
	char *slash;
	long long bits;
	int max;

	if (moat_strlcpy(tmp, s, sizeof(tmp)) >= sizeof(tmp))
		return false;
	memset(c, 0, sizeof(*c));
	slash = strchr(tmp, '/');
	if (slash)
		*slash++ = '\0';
	if (inet_pton(AF_INET, tmp, c->addr) == 1) {
		c->family = AF_INET; max = 32;
	} else if (inet_pton(AF_INET6, tmp, c->addr) == 1) {
		c->family = AF_INET6; max = 128;
	} else
		return false;
	if (slash) {
		if (!parse_ll(slash, 0, max, &bits))
			return false;
		c->bits = (int)bits;
	} else
		c->bits = max;
	return true;
}

static bool
prefix_eq(const unsigned char *a, const unsigned char *b, int bits)
{
	int bytes = bits / 8, rem = bits % 8;
	if (memcmp(a, b, (size_t)bytes) != 0)
		return false;
	if (rem == 0)
		return true;
	unsigned char mask = (unsigned char)(0xff << (8 - rem));
	return (a[bytes] & mask) == (b[bytes] & mask);
}

bool
cidr_match(const struct cidr *c, const struct sockaddr *sa)
{
	const unsigned char *a;
	if (sa->sa_family == AF_INET) {
		a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
		if (c->family == AF_INET)
			return prefix_eq(a, c->addr, c->bits);
		return false;
	}
	if (sa->sa_family == AF_INET6) {
		a = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		if (c->family == AF_INET6)
			return prefix_eq(a, c->addr, c->bits);
		/* v4-mapped v6 against a v4 rule */
		static const unsigned char mapped[12] = { 0,0,0,0,0,0,0,0,0,0,0xff,0xff };
		if (!memcmp(a, mapped, 12))
			return prefix_eq(a + 12, c->addr, c->bits);
	}
	return false;
}

bool
cidr_list_match(const struct cidr *l, size_t n, const struct sockaddr *sa)
{
	for (size_t i = 0; i < n; i++)
		if (cidr_match(&l[i], sa))
			return true;
	return false;
}

bool
listen_admits(const struct listen_conf *l, const struct sockaddr *sa)
{
	if (cidr_list_match(l->deny, l->ndeny, sa))
		return false;
	return l->nallow == 0 || cidr_list_match(l->allow, l->nallow, sa);
}

static void
d_limit_exempt(struct parser *p, int n, char **w)
{
	struct moat_conf *c = p->c;
	/* the directive replaces the default list */
	free(c->limit_exempt);
	c->limit_exempt = NULL;
	c->nlimit_exempt = 0;
	for (int i = 1; i < n; i++) {
		struct cidr cd;
		if (!strcmp(w[i], "none"))
			continue;
		if (!cidr_parse(w[i], &cd)) {
			perr(p, "smtp-limit-exempt: \"%s\" is not an address or CIDR", esc(w[i]));
			continue;
		}
		c->limit_exempt = xreallocarray(c->limit_exempt, c->nlimit_exempt + 1, sizeof(cd));
		c->limit_exempt[c->nlimit_exempt++] = cd;
	}
}

static void
d_state_dir(struct parser *p, int n, char **w)
{
	char cwd[PATH_MAX];
	if (n != 2) {
		perr(p, "state-dir: expected one path");
		return;
	}
	free(p->c->state_dir);
	if (w[1][0] == '/')
		p->c->state_dir = xstrdup(w[1]);
	else {
		if (getcwd(cwd, sizeof(cwd)) == NULL) {
			perr(p, "state-dir: cannot resolve relative path: %s", strerror(errno));
			return;
		}
		struct buf b = BUF_INIT;
		buf_printf(&b, "%s/%s", cwd, strncmp(w[1], "./", 2) == 0 ? w[1] + 2 : w[1]);
		p->c->state_dir = buf_steal(&b);
	}
	size_t l = strlen(p->c->state_dir);
	while (l > 1 && p->c->state_dir[l - 1] == '/')
		p->c->state_dir[--l] = '\0';
}

static void
d_log_level(struct parser *p, int n, char **w)
{
	static const char *names[] = { "crit", "warn", "notice", "info", "debug" };
	if (n == 2)
		for (size_t i = 0; i < ARRAY_SIZE(names); i++)
			if (!strcmp(w[1], names[i])) {
				p->c->log_level = (int)i;
				return;
			}
	perr(p, "log-level: expected crit, warn, notice, info or debug");
}

static void
d_syslog_facility(struct parser *p, int n, char **w)
{
	static const struct { const char *n; int f; } fac[] = {
		{ "mail", LOG_MAIL }, { "daemon", LOG_DAEMON }, { "local0", LOG_LOCAL0 },
		{ "local1", LOG_LOCAL1 }, { "local2", LOG_LOCAL2 }, { "local3", LOG_LOCAL3 },
		{ "local4", LOG_LOCAL4 }, { "local5", LOG_LOCAL5 }, { "local6", LOG_LOCAL6 },
		{ "local7", LOG_LOCAL7 },
	};
	if (n == 2)
		for (size_t i = 0; i < ARRAY_SIZE(fac); i++)
			if (!strcmp(w[1], fac[i].n)) {
				p->c->syslog_facility = fac[i].f;
				return;
			}
	perr(p, "syslog-facility: expected mail, daemon or local0 .. local7");
}

static void
d_bare_lf(struct parser *p, int n, char **w)
{
	if (n == 2 && !strcmp(w[1], "normal"))
		p->c->smtp_reject_bare_lf = false;
	else if (n == 2 && !strcmp(w[1], "reject"))
		p->c->smtp_reject_bare_lf = true;
	else
		perr(p, "smtp-bare-lf: expected normal or reject");
}

static void
d_tls(struct parser *p, int n, char **w)
{
	struct moat_conf *c = p->c;

	if (n == 5 && !strcmp(w[1], "certificate") && !strcmp(w[3], "key")) {
		struct tls_cert_conf t = { xstrdup(w[2]), xstrdup(w[4]), p->file, p->line };
		if (access(t.cert, R_OK) < 0)
			perr(p, "tls certificate: cannot read %s: %s", esc(t.cert), strerror(errno));
		if (access(t.key, R_OK) < 0)
			perr(p, "tls certificate: cannot read key %s: %s", esc(t.key), strerror(errno));
		c->tls_certs = xreallocarray(c->tls_certs, c->ntls_certs + 1, sizeof(t));
		c->tls_certs[c->ntls_certs++] = t;
	} else if (n == 3 && !strcmp(w[1], "min-version")) {
		if (!strcmp(w[2], "1.2") || !strcmp(w[2], "TLSv1.2"))
			c->tls_min_version = 0x0303;
		else if (!strcmp(w[2], "1.3") || !strcmp(w[2], "TLSv1.3"))
			c->tls_min_version = 0x0304;
		else
			perr(p, "tls min-version: expected 1.2 or 1.3 (older versions are not offered)");
	} else if (n == 3 && !strcmp(w[1], "ciphers")) {
		free(c->tls_ciphers);
		c->tls_ciphers = xstrdup(w[2]);
	} else if (n == 3 && !strcmp(w[1], "ciphersuites")) {
		free(c->tls_ciphersuites);
		c->tls_ciphersuites = xstrdup(w[2]);
	} else
		perr(p, "tls: expected \"tls certificate FILE key FILE\", \"tls min-version 1.2|1.3\", "
		    "\"tls ciphers LIST\" or \"tls ciphersuites LIST\"");
}

static void
d_relay_authenticated(struct parser *p, int n, char **w)
{
	struct domain_conf *d;

	if (n != 2) {
		perr(p, "relay-authenticated: expected one URL (smtp://HOST:PORT)");
		return;
	}
	if (p->c->smarthost) {
		perr(p, "relay-authenticated: set twice");
		return;
	}
	d = xcalloc(1, sizeof(*d));
	if (!parse_relay(p, w[1], &d->relay)) {
		free(d);
		return;
	}
	d->relay.tls = d->relay.unix_path ? RTLS_NONE : RTLS_OPPORTUNISTIC;
	d->name = xstrdup("*");
	d->deliver = DELIVER_RELAY;
	p->c->smarthost = d;
}

static void
d_ratelimit(struct parser *p, int n, char **w)
{
	struct rate_rule r;
	char *slash;
	long long lim, win;

	if (n != 5 || strcmp(w[3], "per") != 0) {
		perr(p, "ratelimit: expected \"ratelimit connections|messages|recipients N/DURATION per ip|user\"");
		return;
	}
	memset(&r, 0, sizeof(r));
	if (!strcmp(w[1], "connections")) r.what = RATE_CONNECTIONS;
	else if (!strcmp(w[1], "messages")) r.what = RATE_MESSAGES;
	else if (!strcmp(w[1], "recipients")) r.what = RATE_RECIPIENTS;
	else {
		perr(p, "ratelimit: \"%s\" is not connections, messages or recipients", esc(w[1]));
		return;
	}
	if (!strcmp(w[4], "ip")) r.per = RATE_PER_IP;
	else if (!strcmp(w[4], "user")) r.per = RATE_PER_USER;
	else {
		perr(p, "ratelimit: per takes ip or user, not \"%s\"", esc(w[4]));
		return;
	}
	if (r.what == RATE_CONNECTIONS && r.per == RATE_PER_USER) {
		perr(p, "ratelimit: connections are counted per ip (the user is not known at connect)");
		return;
	}
	slash = strchr(w[2], '/');
	if (slash == NULL) {
		perr(p, "ratelimit: \"%s\" is not N/DURATION (e.g. 100/1h)", esc(w[2]));
		return;
	}
	*slash = '\0';
	win = parse_duration(slash + 1);
	if (!parse_ll(w[2], 1, 1000000000LL, &lim) || win < 1 || win > 604800) {
		perr(p, "ratelimit: bad count or duration in \"%s/%s\" (1 s to 1 w)", esc(w[2]), esc(slash + 1));
		return;
	}
	r.limit = lim;
	r.window = win;
	p->c->rates = xreallocarray(p->c->rates, p->c->nrates + 1, sizeof(r));
	p->c->rates[p->c->nrates++] = r;
}

static void
d_action(struct parser *p, int n, char **w)
{
	char *end;
	double v;
	int which;

	if ((n != 3 && !(n >= 5 && !strcmp(w[3], "domain"))) ||
	    (strcmp(w[1], "tag") && strcmp(w[1], "quarantine") && strcmp(w[1], "reject"))) {
		perr(p, "action: expected \"action tag|quarantine|reject SCORE [domain NAME ...]\" (0 turns it off)");
		return;
	}
	v = strtod(w[2], &end);
	if (*end || end == w[2] || v < 0 || v > 1000) {
		perr(p, "action %s: \"%s\" is not a score from 0 to 1000", w[1], esc(w[2]));
		return;
	}
	which = !strcmp(w[1], "tag") ? 0 : !strcmp(w[1], "quarantine") ? 1 : 2;
	if (n == 3) {
		if (which == 0) p->c->action_tag = v;
		else if (which == 1) p->c->action_quarantine = v;
		else p->c->action_reject = v;
		return;
	}
	for (int i = 4; i < n; i++) {
		p->pa = xreallocarray(p->pa, p->npa + 1, sizeof(*p->pa));
		p->pa[p->npa++] = (struct pending_action){ xstrdup(w[i]), which, v, p->file, p->line };
	}
}

static void
d_rules(struct parser *p, int n, char **w)
{
	if (n != 2) {
		perr(p, "rules: expected one path (a file, a glob or a directory)");
		return;
	}
	p->c->rules_paths = xreallocarray(p->c->rules_paths, p->c->nrules_paths + 1, sizeof(char *));
	p->c->rules_paths[p->c->nrules_paths++] = xstrdup(w[1]);
}

static void
d_bayes_autolearn(struct parser *p, int n, char **w)
{
	struct moat_conf *c = p->c;

	if (n < 2 || (strcmp(w[1], "yes") && strcmp(w[1], "no"))) {
		perr(p, "bayes-autolearn: expected \"bayes-autolearn yes|no [spam N] [ham N]\"");
		return;
	}
	c->bayes_autolearn = !strcmp(w[1], "yes");
	for (int a = 2; a < n; a += 2) {
		char *end;
		double v;
		if (a + 1 >= n || (strcmp(w[a], "spam") && strcmp(w[a], "ham"))) {
			perr(p, "bayes-autolearn: \"%s\": expected spam N or ham N", esc(w[a]));
			return;
		}
		v = strtod(w[a + 1], &end);
		if (*end || end == w[a + 1] || v < -1000 || v > 1000) {
			perr(p, "bayes-autolearn %s: \"%s\" is not a score", w[a], esc(w[a + 1]));
			return;
		}
		if (!strcmp(w[a], "spam"))
			c->bayes_autolearn_spam = v;
		else
			c->bayes_autolearn_ham = v;
	}
	if (c->bayes_autolearn_ham >= c->bayes_autolearn_spam)
		perr(p, "bayes-autolearn: the ham score (%.2f) must be below the spam score (%.2f)",
		    c->bayes_autolearn_ham, c->bayes_autolearn_spam);
}

static void
d_antivirus(struct parser *p, int n, char **w)
{
	struct moat_conf *c = p->c;

	if (n < 3 || (strcmp(w[1], "database") && strcmp(w[1], "clamd"))) {
		perr(p, "antivirus: expected \"antivirus database DIR\" or \"antivirus clamd ADDRESS\" "
		    "[action reject|quarantine] [on-error tempfail|accept]");
		return;
	}
	free(c->av_database);
	free(c->av_clamd);
	c->av_database = c->av_clamd = NULL;
	if (!strcmp(w[1], "database"))
		c->av_database = xstrdup(w[2]);
	else
		c->av_clamd = xstrdup(w[2]);
	for (int a = 3; a < n; a += 2) {
		if (a + 1 >= n) {
			perr(p, "antivirus: \"%s\" needs a value", esc(w[a]));
			return;
		}
		if (!strcmp(w[a], "action") && !strcmp(w[a + 1], "reject")) c->av_quarantine = false;
		else if (!strcmp(w[a], "action") && !strcmp(w[a + 1], "quarantine")) c->av_quarantine = true;
		else if (!strcmp(w[a], "on-error") && !strcmp(w[a + 1], "tempfail")) c->av_accept_on_error = false;
		else if (!strcmp(w[a], "on-error") && !strcmp(w[a + 1], "accept")) c->av_accept_on_error = true;
		else
			perr(p, "antivirus: unknown option \"%s %s\" (action reject|quarantine, on-error tempfail|accept)",
			    esc(w[a]), esc(w[a + 1]));
	}
}

static void
d_score(struct parser *p, int n, char **w)
{
	char *end;
	double v;

	if (n != 3) {
		perr(p, "score: expected \"score SYMBOL N\" (e.g. score SPF_FAIL 3.5)");
		return;
	}
	for (const char *q = w[1]; *q; q++)
		if (!(*q >= 'A' && *q <= 'Z') && !(*q >= 'a' && *q <= 'z') && !(*q >= '0' && *q <= '9') &&
		    *q != '_') {
			perr(p, "score: \"%s\" is not a symbol name (letters, digits, _)", esc(w[1]));
			return;
		}
	if (strlen(w[1]) > 63) {
		perr(p, "score: symbol name longer than 63 characters");
		return;
	}
	v = strtod(w[2], &end);
	if (*end || end == w[2] || v < -1000 || v > 1000) {
		perr(p, "score %s: \"%s\" is not a number from -1000 to 1000", w[1], esc(w[2]));
		return;
	}
	p->c->scores = xreallocarray(p->c->scores, p->c->nscores + 1, sizeof(*p->c->scores));
	p->c->scores[p->c->nscores].symbol = xstrdup(w[1]);
	p->c->scores[p->c->nscores++].score = v;
}

/*
 * Where each filter may run: the earliest SMTP stage whose data it needs
 * (filters/engine.c's table says the same).  Filters can be moved from the
 * end of data to the first RCPT; one that needs the message cannot.
 */
static const struct {
	const char *name;
	const char *needs;              /* NULL: anything up to RCPT will do */
} filter_stages[] = {
	{ "helo", NULL }, { "dnsbl", NULL }, { "geoip", NULL }, { "spf", NULL },
	{ "dkim", "the message header and body" }, { "dmarc", "the DKIM results and the From header" },
	{ "rules", "the message" }, { "antivirus", "the message" }, { "bayes", "the message" },
	{ "attachment-policy", "the message" },
};

static void
d_filter_stage(struct parser *p, int n, char **w)
{
	size_t i;

	if (n != 3 || (strcmp(w[2], "rcpt") && strcmp(w[2], "data"))) {
		perr(p, "filter-stage: expected \"filter-stage NAME rcpt|data\"");
		return;
	}
	for (i = 0; i < ARRAY_SIZE(filter_stages); i++)
		if (!strcmp(w[1], filter_stages[i].name))
			break;
	if (i == ARRAY_SIZE(filter_stages)) {
		perr(p, "filter-stage: no filter named \"%s\" (helo, dnsbl, geoip, spf can move to rcpt)",
		    esc(w[1]));
		return;
	}
	if (!strcmp(w[2], "rcpt") && filter_stages[i].needs) {
		perr(p, "filter-stage %s rcpt: %s needs %s, which does not exist before DATA", w[1], w[1],
		    filter_stages[i].needs);
		return;
	}
	/* the last line for a filter wins */
	for (size_t k = 0; k < p->c->nearly_filters; k++)
		if (!strcmp(p->c->early_filters[k], w[1])) {
			free(p->c->early_filters[k]);
			p->c->early_filters[k] = p->c->early_filters[--p->c->nearly_filters];
			break;
		}
	if (!strcmp(w[2], "rcpt")) {
		p->c->early_filters = xreallocarray(p->c->early_filters, p->c->nearly_filters + 1,
		    sizeof(char *));
		p->c->early_filters[p->c->nearly_filters++] = xstrdup(w[1]);
	}
}

/* -- directive parsers: dnsbl.c, helo.c -- */
#define DNSL_MAX        64      /* dnsbl + dnswl + uribl lines */
#define DNSL_MAX_RETS   32      /* returns entries per line */
#define DNSL_MAX_ZONE   160     /* a v6 nibble name (72) + zone fits 253 */

/* a DNS zone: letters, digits, '-', '_', dot-separated non-empty labels of
 * at most 63; lowercased in place */
static bool
dnsl_zone_ok(char *z)
{
	size_t len = strlen(z), lab = 0;

	if (len == 0 || len > DNSL_MAX_ZONE || z[0] == '.')
		return false;
	if (z[len - 1] == '.')
		z[--len] = '\0';
	for (char *q = z; *q; q++) {
		if (*q >= 'A' && *q <= 'Z')
			*q = (char)(*q - 'A' + 'a');
		if (*q == '.') {
			if (lab == 0)
				return false;
			lab = 0;
			continue;
		}
		if (!((*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') || *q == '-' || *q == '_'))
			return false;
		if (++lab > 63)
			return false;
	}
	return lab > 0;
}

/* "dnsbl ZONE score N [returns 127.0.0.2=N,127.0.0.3=N ...]", same for
 * dnswl and uribl; repeatable, one line per zone and kind */
static void
d_dnsl(struct parser *p, int n, char **w)
{
	struct moat_conf *c = p->c;
	struct dnsbl_list l;
	const char *kw = w[0];
	char *end;
	int a;

	memset(&l, 0, sizeof(l));
	l.kind = !strcmp(kw, "dnsbl") ? DNSL_BL : !strcmp(kw, "dnswl") ? DNSL_WL : DNSL_URI;
	if (n < 4 || strcmp(w[2], "score")) {
		perr(p, "%s: expected \"%s ZONE score N [returns 127.0.0.2=N,...]\"", kw, kw);
		return;
	}
	if (!dnsl_zone_ok(w[1])) {
		perr(p, "%s: \"%s\" is not a DNS zone (at most %d characters)", kw, esc(w[1]),
		    DNSL_MAX_ZONE);
		return;
	}
	l.score = strtod(w[3], &end);
	if (*end || end == w[3] || l.score < -1000 || l.score > 1000) {
		perr(p, "%s %s: score \"%s\" is not a number from -1000 to 1000", kw, w[1], esc(w[3]));
		return;
	}
	for (size_t i = 0; i < c->ndnsbls; i++)
		if (c->dnsbls[i].kind == l.kind && !strcmp(c->dnsbls[i].zone, w[1])) {
			perr(p, "%s: %s is configured twice", kw, w[1]);
			return;
		}
	if (c->ndnsbls >= DNSL_MAX) {
		perr(p, "%s: too many lists (at most %d dnsbl, dnswl and uribl lines)", kw, DNSL_MAX);
		return;
	}
	a = 4;
	if (a < n && strcmp(w[a], "returns")) {
		perr(p, "%s %s: unknown option \"%s\" (returns 127.0.0.2=N,...)", kw, w[1], esc(w[a]));
		return;
	}
	if (a < n && a + 1 >= n) {
		perr(p, "%s %s: returns needs ADDRESS=SCORE[,ADDRESS=SCORE...]", kw, w[1]);
		return;
	}
	/* the words after "returns": comma and/or blank separated A=N */
	for (a = 5; a < n; a++) {
		char *tok, *save = NULL;
		for (tok = strtok_r(w[a], ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			char *eq = strchr(tok, '=');
			struct in_addr in;
			double v;
			if (eq == NULL) {
				perr(p, "%s %s: \"%s\" is not ADDRESS=SCORE", kw, w[1], esc(tok));
				goto bad;
			}
			*eq = '\0';
			if (inet_pton(AF_INET, tok, &in) != 1 || ((unsigned char *)&in)[0] != 127) {
				perr(p, "%s %s: returns: \"%s\" is not an address in 127.0.0.0/8", kw, w[1],
				    esc(tok));
				goto bad;
			}
			v = strtod(eq + 1, &end);
			if (*end || end == eq + 1 || v < -1000 || v > 1000) {
				perr(p, "%s %s: returns %s: \"%s\" is not a number from -1000 to 1000", kw,
				    w[1], tok, esc(eq + 1));
				goto bad;
			}
			if (l.nrets >= DNSL_MAX_RETS) {
				perr(p, "%s %s: returns: at most %d addresses", kw, w[1], DNSL_MAX_RETS);
				goto bad;
			}
			l.rets = xreallocarray(l.rets, l.nrets + 1, sizeof(*l.rets));
			memcpy(l.rets[l.nrets].addr, &in, 4);
			l.rets[l.nrets++].score = v;
		}
	}
	l.zone = xstrdup(w[1]);
	c->dnsbls = xreallocarray(c->dnsbls, c->ndnsbls + 1, sizeof(*c->dnsbls));
	c->dnsbls[c->ndnsbls++] = l;
	return;
bad:
	free(l.rets);
}

/* -- directive parsers: spf.c -- */

/* -- directive parsers: dkim.c, dmarc.c -- */
/* dmarc-reject-action reject|quarantine|score, dmarc-quarantine-action ... */
static void
d_dmarc_action(struct parser *p, int n, char **w)
{
	static const struct {
		const char *name;
		enum dmarc_action a;
	} acts[] = {
		{ "reject", DMARC_ACT_REJECT },
		{ "quarantine", DMARC_ACT_QUARANTINE },
		{ "score", DMARC_ACT_SCORE },
	};
	bool rej = !strcmp(w[0], "dmarc-reject-action");

	if (n != 2) {
		perr(p, "%s: expected one of reject, quarantine, score", w[0]);
		return;
	}
	for (size_t i = 0; i < ARRAY_SIZE(acts); i++)
		if (!strcmp(w[1], acts[i].name)) {
			if (rej)
				p->c->dmarc_reject_action = acts[i].a;
			else
				p->c->dmarc_quarantine_action = acts[i].a;
			return;
		}
	perr(p, "%s: \"%s\" is not one of reject, quarantine, score", w[0], esc(w[1]));
}

/* -- directive parsers: geoip.c, greylist.c -- */

/* geoip PATH, geoip-asn PATH: the file must be readable now; its format
 * is checked when the engine opens it (moatd -n does) */
static void
d_geoip(struct parser *p, int n, char **w)
{
	char **dst = !strcmp(w[0], "geoip") ? &p->c->geoip_path : &p->c->geoip_asn_path;

	if (n != 2) {
		perr(p, "%s: expected one path (a MaxMind DB file, .mmdb)", w[0]);
		return;
	}
	if (*dst) {
		perr(p, "%s: set twice", w[0]);
		return;
	}
	if (access(w[1], R_OK) < 0) {
		perr(p, "%s: cannot read %s: %s", w[0], esc(w[1]), strerror(errno));
		return;
	}
	*dst = xstrdup(w[1]);
}

static void
d_pregreet_action(struct parser *p, int n, char **w)
{
	if (n == 2 && !strcmp(w[1], "reject"))
		p->c->smtp_pregreet_score = false;
	else if (n == 2 && !strcmp(w[1], "score"))
		p->c->smtp_pregreet_score = true;
	else
		perr(p, "smtp-pregreet-action: expected reject or score");
}

/* -- directive parsers: milter (#9) -- */

/* listen milter ADDR:PORT | unix:PATH (no options): the milter process
 * (milter/milter.c) has libmilter bind it, so the master never does */
static bool
milter_listen_parse(struct parser *p, int n, char **w, struct listen_conf *l)
{
	char *host = NULL, *port = NULL;
	bool ok = false;

	if (n > 3) {
		perr(p, "listen milter: options are not supported here (\"%s\")", esc(w[3]));
		return false;
	}
	l->tls_set = l->auth_set = true;
	l->tls = TLS_NONE;
	l->auth = AUTH_NONE;
	if (!strncmp(w[2], "unix:", 5)) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&l->ss;
		const char *path = w[2] + 5;
		size_t len = strlen(path);
		if (path[0] != '/' || len >= sizeof(sun->sun_path)) {
			perr(p, "listen milter: \"%s\" is not an absolute socket path of at most %zu bytes",
			    esc(path), sizeof(sun->sun_path) - 1);
			return false;
		}
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, path, len + 1);
		l->sslen = sizeof(*sun);
	} else {
		struct addrinfo hints, *res = NULL;
		if (!parse_hostport(w[2], NULL, &host, &port) || !valid_port(port)) {
			perr(p, "listen milter: \"%s\" is not ADDRESS:PORT or unix:/PATH", esc(w[2]));
			goto out;
		}
		if (!strcmp(host, "*"))
			host[0] = '\0';
		memset(&hints, 0, sizeof(hints));
		hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
		hints.ai_socktype = SOCK_STREAM;
		if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0 || res == NULL) {
			perr(p, "listen milter: \"%s\" is not a numeric IP address", esc(host));
			goto out;
		}
		memcpy(&l->ss, res->ai_addr, res->ai_addrlen);
		l->sslen = res->ai_addrlen;
		freeaddrinfo(res);
	}
	for (size_t i = 0; i < p->c->nlistens; i++) {
		struct listen_conf *o = &p->c->listens[i];
		if (o->sslen == l->sslen && !memcmp(&o->ss, &l->ss, l->sslen)) {
			perr(p, "listen: %s is already used by the listener at line %d", w[2], o->line);
			goto out;
		}
		if (o->kind == LISTEN_MILTER) {
			perr(p, "listen milter: only one milter listener (the first is at line %d)", o->line);
			goto out;
		}
	}
	l->spec = xstrdup(w[2]);
	ok = true;
out:
	free(host);
	free(port);
	return ok;
}

/* milter-reject-action reject|discard */
static void
d_milter_reject_action(struct parser *p, int n, char **w)
{
	if (n != 2 || (strcmp(w[1], "reject") && strcmp(w[1], "discard"))) {
		perr(p, "milter-reject-action: expected reject or discard");
		return;
	}
	p->c->milter_discard = !strcmp(w[1], "discard");
}

/* milter-socket-mode 0660 (octal): permissions of a unix: milter socket */
static void
d_milter_socket_mode(struct parser *p, int n, char **w)
{
	char *end;
	long v;

	if (n != 2) {
		perr(p, "milter-socket-mode: expected one octal mode such as 0660");
		return;
	}
	errno = 0;
	v = strtol(w[1], &end, 8);
	if (errno || *end || end == w[1] || v < 0 || v > 0777) {
		perr(p, "milter-socket-mode: \"%s\" is not an octal mode from 0 to 0777", esc(w[1]));
		return;
	}
	p->c->milter_socket_mode = (int)v | MILTER_SOCKET_MODE_SET;
}

/* -- directive parsers: operations (#10) -- */

/* http-token-file PATH: the bearer token is the file's first line (read now,
 * by the master, which may be root) */
static void
d_http_token_file(struct parser *p, int n, char **w)
{
	char line[512];
	FILE *f;

	if (n != 2) {
		perr(p, "http-token-file: expected \"http-token-file PATH\"");
		return;
	}
	if ((f = fopen(w[1], "r")) == NULL) {
		perr(p, "http-token-file: cannot read %s: %s", esc(w[1]), strerror(errno));
		return;
	}
	if (fgets(line, sizeof(line), f) == NULL)
		line[0] = '\0';
	fclose(f);
	line[strcspn(line, "\r\n")] = '\0';
	if (strlen(line) < 16) {
		perr(p, "http-token-file: %s: the token must be at least 16 characters", esc(w[1]));
		return;
	}
	free(p->c->http_token);
	p->c->http_token = xstrdup(line);
	free(p->c->http_token_file);
	p->c->http_token_file = xstrdup(w[1]);
}

/* alert-webhook http://HOST:PORT/PATH (plain http: a local relay or collector) */
static void
d_alert_webhook(struct parser *p, int n, char **w)
{
	const char *h, *e;

	if (n != 2) {
		perr(p, "alert-webhook: expected \"alert-webhook http://HOST[:PORT]/PATH\"");
		return;
	}
	if (strncmp(w[1], "http://", 7) != 0) {
		perr(p, "alert-webhook: \"%s\" is not an http:// URL (https is not supported; "
		    "use a local relay)", esc(w[1]));
		return;
	}
	h = w[1] + 7;
	e = h + strcspn(h, "/?#");
	if (e == h || strlen(w[1]) > 1000 || strpbrk(w[1], " \"\\<>") != NULL) {
		perr(p, "alert-webhook: \"%s\" has no host or bad characters", esc(w[1]));
		return;
	}
	/* an address, not a name: the worker must not wait for DNS */
	{
		char host[64];
		unsigned char a[16];
		const char *hs = h, *he;
		if (*hs == '[') {
			hs++;
			he = memchr(hs, ']', (size_t)(e - hs));
		} else
			he = memchr(hs, ':', (size_t)(e - hs));
		if (he == NULL)
			he = e;
		if ((size_t)(he - hs) >= sizeof(host)) {
			perr(p, "alert-webhook: \"%s\": the host must be an IP address", esc(w[1]));
			return;
		}
		memcpy(host, hs, (size_t)(he - hs));
		host[he - hs] = '\0';
		if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1) {
			perr(p, "alert-webhook: \"%s\": the host must be an IP address (no DNS lookups "
			    "in the worker)", esc(w[1]));
			return;
		}
	}
	free(p->c->alert_webhook);
	p->c->alert_webhook = xstrdup(w[1]);
}

static const struct {
	const char *name;
	void (*fn)(struct parser *, int, char **);
} directives[] = {
	/* -- dnsbl.c, helo.c -- */
	{ "dnsbl", d_dnsl },
	{ "dnswl", d_dnsl },
	{ "uribl", d_dnsl },

	/* -- spf.c -- */

	/* -- dkim.c, dmarc.c -- */
	{ "dmarc-reject-action", d_dmarc_action },
	{ "dmarc-quarantine-action", d_dmarc_action },

	/* -- geoip.c, greylist.c -- */
	{ "geoip", d_geoip },
	{ "geoip-asn", d_geoip },
	{ "smtp-pregreet-action", d_pregreet_action },

	/* -- milter (#9) -- */
	{ "milter-reject-action", d_milter_reject_action },
	{ "milter-socket-mode", d_milter_socket_mode },
	/* -- operations (#10) -- */
	{ "http-token-file", d_http_token_file },
	{ "alert-webhook", d_alert_webhook },

	{ "score", d_score },
	{ "bayes-autolearn", d_bayes_autolearn },
	{ "filter-stage", d_filter_stage },
	{ "action", d_action },
	{ "rules", d_rules },
	{ "antivirus", d_antivirus },
	{ "tls", d_tls },
	{ "ratelimit", d_ratelimit },
	{ "relay-authenticated", d_relay_authenticated },
	{ "listen", d_listen },
	{ "domain", d_domain },
	{ "state-dir", d_state_dir },
	{ "log-level", d_log_level },
	{ "syslog-facility", d_syslog_facility },
	{ "smtp-limit-exempt", d_limit_exempt },
	{ "smtp-bare-lf", d_bare_lf },
};

static void
parse_line(struct parser *p, char *line)
{
	char *w[MAXWORDS];
	int n = tokenize(p, line, w);
	size_t i;

	if (n <= 0)
		return;
	for (i = 0; i < ARRAY_SIZE(directives); i++)
		if (!strcmp(w[0], directives[i].name)) {
			directives[i].fn(p, n, w);
			return;
		}
	for (i = 0; i < ARRAY_SIZE(settings); i++)
		if (!strcmp(w[0], settings[i].name)) {
			if (n != 2) {
				perr(p, "%s: expected exactly one value%s", w[0],
				    settings[i].type == CT_STRING ? " (quote it if it has spaces)" : "");
				return;
			}
			if (p->seen[i])
				perr(p, "%s: set twice (first at line %d)", w[0], p->seen[i]);
			else if (set_scalar(p, &settings[i], w[1], p->c))
				p->seen[i] = (unsigned char)MIN(p->line, 255);
			return;
		}
	perr(p, "unknown directive \"%s\"", esc(w[0]));
}

static void
set_defaults(struct parser *p, struct moat_conf *c)
{
	struct buf dummy = BUF_INIT;
	struct parser dp = { .file = "(defaults)", .errs = &dummy };

	c->log_level = LOG_LVL_INFO;
	c->syslog_facility = LOG_MAIL;
	c->action_tag = 5;
	c->action_quarantine = 0;
	c->action_reject = 15;
	c->bayes_autolearn_spam = 12;   /* SpamAssassin's bayes_auto_learn thresholds */
	c->bayes_autolearn_ham = 0.1;
	for (size_t i = 0; i < ARRAY_SIZE(settings); i++)
		if (settings[i].def)
			set_scalar(&dp, &settings[i], settings[i].def, c);
	if (dummy.len)
		fatalx("internal: bad built-in default: %s", dummy.data);
	buf_free(&dummy);
	(void)p;
	static const char *exempt[] = { "127.0.0.0/8", "::1" };
	c->limit_exempt = xcalloc(ARRAY_SIZE(exempt), sizeof(struct cidr));
	for (size_t i = 0; i < ARRAY_SIZE(exempt); i++)
		cidr_parse(exempt[i], &c->limit_exempt[i]);
	c->nlimit_exempt = ARRAY_SIZE(exempt);
}

static void
finish(struct parser *p, struct moat_conf *c)
{
	p->line = 0;
	if (c->hostname == NULL) {
		char hn[256];
		if (gethostname(hn, sizeof(hn) - 1) < 0 || hn[0] == '\0')
			moat_strlcpy(hn, "localhost", sizeof(hn));
		hn[sizeof(hn) - 1] = '\0';
		c->hostname = xstrdup(hn);
	} else if (!valid_domain(c->hostname)) {
		buf_printf(p->errs, "%s: hostname \"%s\" is not a valid host name\n", p->file,
		    esc(c->hostname));
		p->nerr++;
	}
	if (c->state_dir == NULL)
		c->state_dir = xstrdup(LOCALSTATEDIR "/lib/moat");
	if (c->postmaster == NULL) {
		struct buf b = BUF_INIT;
		buf_printf(&b, "postmaster@%s", c->hostname);
		c->postmaster = buf_steal(&b);
	}
	if (c->pid_file == NULL) {
		struct buf b = BUF_INIT;
		buf_printf(&b, "%s/moatd.pid", c->state_dir);
		c->pid_file = buf_steal(&b);
	}
	if (c->queue_retry_max < c->queue_retry_min) {
		buf_printf(p->errs, "%s: queue-retry-max (%llds) is below queue-retry-min (%llds)\n",
		    p->file, c->queue_retry_max, c->queue_retry_min);
		p->nerr++;
	}
	for (size_t i = 0; i < c->nlistens; i++) {
		struct listen_conf *l = &c->listens[i];
		bool implicit = l->kind == LISTEN_SMTPS || l->kind == LISTEN_IMAPS ||
		    l->kind == LISTEN_POP3S;
		if (!l->tls_set)
			l->tls = implicit ? TLS_IMPLICIT : c->ntls_certs ? TLS_STARTTLS : TLS_NONE;
		if (!l->auth_set)
			l->auth = l->kind == LISTEN_SUBMISSION || l->kind == LISTEN_SMTPS ?
			    AUTH_REQUIRED : AUTH_NONE;
		if (l->tls != TLS_NONE && c->ntls_certs == 0) {
			buf_printf(p->errs, "%s:%d: listen %s %s needs TLS: add \"tls certificate FILE key FILE\"\n",
			    l->file, l->line, listen_kind_name(l->kind), l->spec);
			p->nerr++;
		}
		if (implicit && l->tls != TLS_IMPLICIT) {
			buf_printf(p->errs, "%s:%d: listen %s is implicit TLS; tls=%s makes no sense\n",
			    l->file, l->line, listen_kind_name(l->kind),
			    l->tls == TLS_NONE ? "none" : "starttls");
			p->nerr++;
		}
	}
	if (c->tls_min_version == 0)
		c->tls_min_version = 0x0303;
	/* per-domain thresholds: the global ones, then the overrides */
	for (size_t i = 0; i < c->ndomains; i++) {
		c->domains[i].th_tag = c->action_tag;
		c->domains[i].th_quarantine = c->action_quarantine;
		c->domains[i].th_reject = c->action_reject;
	}
	if (c->smarthost) {
		c->smarthost->th_tag = c->action_tag;
		c->smarthost->th_quarantine = c->action_quarantine;
		c->smarthost->th_reject = c->action_reject;
	}
	for (size_t i = 0; i < p->npa; i++) {
		struct pending_action *a = &p->pa[i];
		struct domain_conf *d = (struct domain_conf *)conf_find_domain(c, a->domain);
		if (d == NULL) {
			buf_printf(p->errs, "%s:%d: action %s ... domain %s: not a domain of this gateway "
			    "(add \"domain %s deliver ...\")\n", a->file, a->line,
			    a->which == 0 ? "tag" : a->which == 1 ? "quarantine" : "reject", esc(a->domain),
			    esc(a->domain));
			p->nerr++;
		} else if (a->which == 0)
			d->th_tag = a->v;
		else if (a->which == 1)
			d->th_quarantine = a->v;
		else
			d->th_reject = a->v;
		free(a->domain);
	}
	free(p->pa);
	p->pa = NULL;
	p->npa = 0;
	if (c->recipient_delimiter && strlen(c->recipient_delimiter) > 1) {
		buf_printf(p->errs, "%s: recipient-delimiter must be one character\n", p->file);
		p->nerr++;
	}
}

struct moat_conf *
conf_load_string(const char *name, const char *text, struct buf *errs)
{
	struct parser p;
	struct moat_conf *c = xcalloc(1, sizeof(*c));
	const char *s = text;

	memset(&p, 0, sizeof(p));
	p.file = name;
	p.errs = errs;
	p.c = c;
	c->path = xstrdup(name);
	set_defaults(&p, c);
	while (*s) {
		const char *nl = strchr(s, '\n');
		size_t len = nl ? (size_t)(nl - s) : strlen(s);
		char *line = xstrndup(s, len);
		p.line++;
		if (memchr(s, '\0', len) == NULL)
			parse_line(&p, line);
		free(line);
		s += len + (nl ? 1 : 0);
	}
	finish(&p, c);
	if (p.nerr) {
		conf_free(c);
		return NULL;
	}
	return c;
}

struct moat_conf *
conf_load(const char *path, struct buf *errs)
{
	FILE *f = fopen(path, "r");
	struct buf text = BUF_INIT;
	char chunk[8192];
	size_t n;
	struct moat_conf *c;

	if (f == NULL) {
		buf_printf(errs, "%s:0: cannot open: %s\n", path, strerror(errno));
		return NULL;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
		buf_add(&text, chunk, n);
		if (text.len > 16 * 1024 * 1024) {
			buf_printf(errs, "%s:0: file is larger than 16 MiB\n", path);
			fclose(f);
			buf_free(&text);
			return NULL;
		}
	}
	if (ferror(f)) {
		buf_printf(errs, "%s:0: read error: %s\n", path, strerror(errno));
		fclose(f);
		buf_free(&text);
		return NULL;
	}
	fclose(f);
	if (memchr(text.data ? text.data : "", '\0', text.len)) {
		buf_printf(errs, "%s:0: file contains a NUL byte\n", path);
		buf_free(&text);
		return NULL;
	}
	c = conf_load_string(path, text.data ? text.data : "", errs);
	buf_free(&text);
	return c;
}

const char *
conf_default_path(const char *arg)
{
	static const char sys[] = SYSCONFDIR "/moat/moat.conf";
	const char *env;
	struct stat st;

	if (arg)
		return arg;
	if ((env = getenv("MOAT_CONF")) != NULL && *env)
		return env;
	if (stat(sys, &st) == 0)
		return sys;
	return NULL;
}

struct moat_conf *
conf_load_default(const char *arg, struct buf *errs)
{
	const char *path = conf_default_path(arg);
	if (path)
		return conf_load(path, errs);
	return conf_load_string("(embedded default)", conf_embedded_default, errs);
}

void
conf_free(struct moat_conf *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < ARRAY_SIZE(settings); i++)
		if (settings[i].type == CT_STRING)
			free(*(char **)((char *)c + settings[i].off));
	for (size_t i = 0; i < c->nlistens; i++) {
		free(c->listens[i].spec);
		free(c->listens[i].allow);
		free(c->listens[i].deny);
	}
	free(c->listens);
	for (size_t i = 0; i < c->ndomains; i++) {
		struct domain_conf *d = &c->domains[i];
		free(d->name);
		free(d->relay.host);
		free(d->relay.port);
		free(d->relay.unix_path);
		free(d->relay.name);
		free(d->relay.ca_file);
	}
	free(c->domains);
	free(c->limit_exempt);
	free(c->rates);
	for (size_t i = 0; i < c->nrules_paths; i++)
		free(c->rules_paths[i]);
	free(c->rules_paths);
	free(c->av_database);
	free(c->av_clamd);
	for (size_t i = 0; i < c->nscores; i++)
		free(c->scores[i].symbol);
	free(c->scores);
	for (size_t i = 0; i < c->nearly_filters; i++)
		free(c->early_filters[i]);
	free(c->early_filters);
	/* -- free: dnsbl.c, helo.c -- */
	for (size_t i = 0; i < c->ndnsbls; i++) {
		free(c->dnsbls[i].zone);
		free(c->dnsbls[i].rets);
	}
	free(c->dnsbls);

	/* -- free: spf.c -- */

	/* -- free: dkim.c, dmarc.c -- */

	/* -- free: geoip.c, greylist.c -- */
	free(c->geoip_path);
	free(c->geoip_asn_path);

	/* -- free: milter (#9) -- */

	/* -- free: operations (#10) -- */
	free(c->http_token_file);
	free(c->alert_webhook);

	for (size_t i = 0; i < c->ntls_certs; i++) {
		free(c->tls_certs[i].cert);
		free(c->tls_certs[i].key);
	}
	free(c->tls_certs);
	free(c->tls_ciphers);
	free(c->tls_ciphersuites);
	if (c->smarthost) {
		free(c->smarthost->name);
		free(c->smarthost->relay.host);
		free(c->smarthost->relay.port);
		free(c->smarthost->relay.unix_path);
		free(c->smarthost->relay.name);
		free(c->smarthost->relay.ca_file);
		free(c->smarthost);
	}
	free(c->path);
	free(c->state_dir);
	free(c);
}

const struct domain_conf *
conf_find_domain(const struct moat_conf *c, const char *domain)
{
	size_t dl = strlen(domain);
	if (dl && domain[dl - 1] == '.')
		dl--;
	for (size_t i = 0; i < c->ndomains; i++)
		if (strlen(c->domains[i].name) == dl &&
		    ascii_strncasecmp(c->domains[i].name, domain, dl) == 0)
			return &c->domains[i];
	return NULL;
}

const struct domain_conf *
conf_route(const struct moat_conf *c, const char *domain)
{
	const struct domain_conf *d = domain ? conf_find_domain(c, domain) : NULL;
	return d ? d : c->smarthost;
}

void
conf_path(const struct moat_conf *c, const char *sub, char *out, size_t outsz)
{
	if ((size_t)snprintf(out, outsz, "%s/%s", c->state_dir, sub) >= outsz)
		fatalx("path too long: %s/%s", c->state_dir, sub);
}
