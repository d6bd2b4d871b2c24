/* test_conf.c - the config parser: values, defaults, FILE:LINE errors */
#include "config.h"
#include "t.h"
#include "buf.h"
#include "conf.h"
#include <stdlib.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

static struct moat_conf *
load(const char *text, struct buf *errs)
{
	buf_reset(errs);
	return conf_load_string("t.conf", text, errs);
}

int
main(void)
{
	struct buf e = BUF_INIT;
	struct moat_conf *c;

	c = load("hostname mx.example.net\nstate-dir /var/lib/moat\nlisten smtp 127.0.0.1:2525\n"
	    "listen smtp [::1]:2525\ndomain Example.NET deliver store\n"
	    "domain example.org deliver relay lmtp://10.0.0.5:24\n"
	    "domain example.com deliver relay smtp://[2001:db8::1]\n"
	    "domain sock.test deliver relay lmtp:unix:/run/dovecot/lmtp\n"
	    "message-size-limit 10M\nsmtp-max-recipients 5\nqueue-lifetime 2d\n"
	    "smtp-banner \"ESMTP moat \\\"gateway\\\"\"  # comment\n", &e);
	ok(c != NULL, "valid config loads");
	if (c == NULL) {
		printf("# %s", e.data);
		return t_done();
	}
	is_str(c->hostname, "mx.example.net", "hostname");
	is_int(c->nlistens, 2, "two listeners");
	is_int(c->listens[1].ss.ss_family, AF_INET6, "IPv6 listener");
	is_int(c->ndomains, 4, "four domains");
	is_str(c->domains[0].name, "example.net", "domain lowercased");
	is_int(c->domains[1].relay.proto, RELAY_LMTP, "lmtp relay");
	is_str(c->domains[1].relay.name, "lmtp://10.0.0.5:24", "relay canonical name");
	is_str(c->domains[2].relay.name, "smtp://[2001:db8::1]:25", "default smtp port, v6");
	is_str(c->domains[3].relay.unix_path, "/run/dovecot/lmtp", "unix lmtp");
	is_int(c->message_size_limit, 10485760, "size with suffix");
	is_int(c->smtp_max_rcpts, 5, "int setting");
	is_int(c->queue_lifetime, 172800, "duration");
	is_int(c->smtp_max_bad_commands, 20, "default kept");
	is_str(c->smtp_banner, "ESMTP moat \"gateway\"", "quoted value with escapes");
	ok(conf_find_domain(c, "EXAMPLE.net") == &c->domains[0], "domain lookup is case-insensitive");
	ok(conf_find_domain(c, "example.net.") == &c->domains[0], "trailing dot");
	ok(conf_find_domain(c, "sub.example.net") == NULL, "no implicit subdomains");
	is_str(c->postmaster, "postmaster@mx.example.net", "postmaster default");
	conf_free(c);

	c = load("listen smtp 127.0.0.1:25\nbogus 1\nmessage-size-limit 12x\n"
	    "domain a.test deliver store\ndomain A.test deliver store\n"
	    "domain b.test deliver relay ftp://x\nlisten smtp 127.0.0.1:25\n"
	    "smtp-banner \"unterminated\nthreads 0\nlisten milter unix:relative.sock\n", &e);
	ok(c == NULL, "broken config refused");
	ok(strstr(e.data, "t.conf:2: unknown directive \"bogus\"") != NULL, "unknown directive at line 2");
	ok(strstr(e.data, "t.conf:3: message-size-limit") != NULL, "bad size at line 3");
	ok(strstr(e.data, "t.conf:5: domain: a.test is configured twice") != NULL, "duplicate domain at line 5");
	ok(strstr(e.data, "t.conf:6: deliver relay") != NULL, "bad relay URL at line 6");
	ok(strstr(e.data, "t.conf:7: listen: 127.0.0.1:25 is already used") != NULL, "duplicate listener at line 7");
	ok(strstr(e.data, "t.conf:8: unterminated quoted string") != NULL, "unterminated quote at line 8");
	ok(strstr(e.data, "t.conf:9: threads") != NULL, "out of range at line 9");
	ok(strstr(e.data, "t.conf:10: listen milter") != NULL, "bad milter listener reported");
	printf("# errors:\n# %s\n", e.data);

	/* -- milter (#9) -- */
	c = load("listen milter unix:/run/moat/milter.sock\nmilter-socket-mode 0666\n"
	    "milter-reject-action discard\nmilter-subject-prefix \"[SPAM]\"\n", &e);
	ok(c != NULL && c->nlistens == 1 && c->listens[0].kind == LISTEN_MILTER &&
	    c->listens[0].ss.ss_family == AF_UNIX, "listen milter unix:PATH");
	ok(c && (c->milter_socket_mode & 0777) == 0666 && c->milter_discard &&
	    !strcmp(c->milter_subject_prefix, "[SPAM]"), "milter directives");
	conf_free(c);
	c = load("listen milter 127.0.0.1:8891\nlisten milter unix:/x.sock\nmilter-socket-mode 0999\n"
	    "milter-reject-action drop\nlisten milter 127.0.0.1:8892 tls=none\n", &e);
	ok(c == NULL && strstr(e.data, "t.conf:2: listen milter: only one milter listener") &&
	    strstr(e.data, "t.conf:3: milter-socket-mode") && strstr(e.data, "t.conf:4: milter-reject-action") &&
	    strstr(e.data, "t.conf:5: listen milter: options"), "milter config errors");

	c = load("threads 4\nthreads 5\n", &e);
	ok(c == NULL && strstr(e.data, "t.conf:2: threads: set twice (first at line 1)"), "setting twice");
	c = load("listen smtp 0.0.0.0:25\nlisten smtp localhost:25\n", &e);
	ok(c == NULL && strstr(e.data, "t.conf:2:"), "hostnames refused in listen");
	c = load("queue-retry-min 1h\nqueue-retry-max 1m\n", &e);
	ok(c == NULL && strstr(e.data, "queue-retry-max"), "cross-field check");

	c = load("listen smtps 127.0.0.1:465\nlisten imap 127.0.0.1:143 tls=starttls\n", &e);
	ok(c == NULL && strstr(e.data, "t.conf:1: listen smtps 127.0.0.1:465 needs TLS") &&
	    strstr(e.data, "t.conf:2: listen imap"), "TLS listeners need a certificate");
	c = load("listen submission 127.0.0.1:587\nlisten pop3 127.0.0.1:110\n", &e);
	ok(c && c->listens[0].auth == AUTH_REQUIRED && c->listens[0].tls == TLS_NONE &&
	    c->listens[1].tls == TLS_NONE, "defaults without a certificate");
	conf_free(c);
	c = load("tls certificate /nonexistent/cert.pem key /nonexistent/key.pem\n", &e);
	ok(c == NULL && strstr(e.data, "t.conf:1: tls certificate: cannot read"), "unreadable certificate reported");
	c = load("tls min-version 1.1\n", &e);
	ok(c == NULL && strstr(e.data, "t.conf:1: tls min-version"), "TLS below 1.2 refused");

	c = conf_load_string("(embedded default)", conf_embedded_default, &e);
	ok(c != NULL && c->nlistens == 1 && c->ndomains == 1, "embedded default is valid");
	conf_free(c);

	struct cidr cd;
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
	inet_pton(AF_INET, "10.1.2.3", &sin.sin_addr);
	ok(cidr_parse("10.0.0.0/8", &cd) && cidr_match(&cd, (struct sockaddr *)&sin), "v4 cidr match");
	ok(cidr_parse("10.1.2.4/31", &cd) && !cidr_match(&cd, (struct sockaddr *)&sin), "v4 cidr mismatch");
	ok(cidr_parse("0.0.0.0/0", &cd) && cidr_match(&cd, (struct sockaddr *)&sin), "/0 matches all");
	inet_pton(AF_INET6, "::ffff:10.1.2.3", &sin6.sin6_addr);
	ok(cidr_parse("10.0.0.0/8", &cd) && cidr_match(&cd, (struct sockaddr *)&sin6), "v4-mapped v6 matches v4 rule");
	inet_pton(AF_INET6, "2001:db8::5", &sin6.sin6_addr);
	ok(cidr_parse("2001:db8::/32", &cd) && cidr_match(&cd, (struct sockaddr *)&sin6), "v6 cidr");
	ok(!cidr_parse("10.0.0.0/33", &cd), "bad prefix length");
	ok(!cidr_parse("nonsense", &cd), "bad address");
	buf_free(&e);
	return t_done();
}
