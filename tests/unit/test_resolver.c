/*
 * test_resolver.c - lib/resolver.c and the DNS helpers of filters/helo.c.
 *
 * Without MOAT_TEST_DNS only the pure helpers run (dns_reverse_name,
 * helo_syntax, helo_is_loopback).  tests/integration/test_dnsbl.py runs it
 * again with MOAT_TEST_DNS=127.0.0.1:PORT pointing at its test DNS server,
 * which serves the zone in ZONE below (test_dnsbl.py keeps the same data):
 * then A/TXT/PTR/NXDOMAIN/NODATA/SERVFAIL/timeout and the batch call are
 * checked against it.
 */
#include "config.h"
#include "buf.h"
#include "conf.h"
#include "resolver.h"
#include "helo.h"
#include "t.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double
now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
helpers(void)
{
	char b[256];

	ok(dns_reverse_name("192.0.2.1", "zen.test", b, sizeof(b)), "v4 reverse name");
	is_str(b, "1.2.0.192.zen.test", "v4: octets reversed, zone appended");
	ok(dns_reverse_name("127.0.0.1", "", b, sizeof(b)), "v4 without zone");
	is_str(b, "1.0.0.127", "no trailing dot without a zone");
	ok(dns_reverse_name("2001:db8::1", "zen.test", b, sizeof(b)), "v6 reverse name");
	is_str(b, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test",
	    "v6: 32 nibbles reversed (RFC 5782)");
	ok(dns_reverse_name("::1", "ip6.arpa", b, sizeof(b)), "::1");
	is_str(b, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa", "::1 nibbles");
	ok(!dns_reverse_name("example.com", "zen.test", b, sizeof(b)), "a name is not an address");
	ok(!dns_reverse_name("1.2.3", "zen.test", b, sizeof(b)), "1.2.3 is not an address");
	ok(!dns_reverse_name("192.0.2.1", "zen.test", b, 10), "too small a buffer: false, no overflow");
	ok(!dns_reverse_name("", "", b, sizeof(b)), "empty: false");

	ok(helo_syntax("mail.example.com", false) == NULL, "FQDN HELO is fine");
	ok(helo_syntax("mail.example.com.", false) == NULL, "one trailing dot is fine");
	ok(helo_syntax("[192.0.2.1]", false) == NULL, "v4 address literal is fine");
	ok(helo_syntax("[IPv6:2001:db8::1]", false) == NULL, "v6 address literal is fine");
	is_str(helo_syntax("[2001:db8::1]", false), "HELO_BAD_LITERAL", "v6 literal without the IPv6: tag");
	is_str(helo_syntax("[999.1.1.1]", false), "HELO_BAD_LITERAL", "bad v4 literal");
	is_str(helo_syntax("[192.0.2.1", false), "HELO_BAD_LITERAL", "unclosed literal");
	is_str(helo_syntax("192.0.2.1", false), "HELO_BARE_IP", "bare IPv4");
	is_str(helo_syntax("2001:db8::1", false), "HELO_BARE_IP", "bare IPv6");
	is_str(helo_syntax("mailserver", false), "HELO_NOT_FQDN", "no dot");
	is_str(helo_syntax("a..b", false), "HELO_BAD_SYNTAX", "empty label");
	is_str(helo_syntax(".example.com", false), "HELO_BAD_SYNTAX", "leading dot");
	is_str(helo_syntax("bad!host.example", false), "HELO_BAD_SYNTAX", "bad character");
	is_str(helo_syntax("", false), "HELO_NONE", "empty");
	is_str(helo_syntax("localhost", false), "HELO_LOCALHOST", "localhost from the internet");
	is_str(helo_syntax("localhost.localdomain", false), "HELO_LOCALHOST", "localhost.localdomain");
	ok(helo_syntax("localhost", true) == NULL, "localhost from a loopback client is fine");
	{
		char big[400];
		memset(big, 'a', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		big[10] = '.';
		is_str(helo_syntax(big, false), "HELO_BAD_SYNTAX", "400 characters");
	}
	ok(helo_is_loopback("127.0.0.1") && helo_is_loopback("127.3.2.1") && helo_is_loopback("::1") &&
	    helo_is_loopback("::ffff:127.0.0.1"), "loopback: 127/8, ::1, v4-mapped 127/8");
	ok(!helo_is_loopback("192.0.2.1") && !helo_is_loopback("::2") && !helo_is_loopback("") &&
	    !helo_is_loopback("x"), "not loopback");
}

/* the directives of the DNS filters as parsed */
static void
conf_checks(void)
{
	struct buf e = BUF_INIT;
	struct moat_conf *c;
	static const char base[] = "state-dir ./var\nlisten smtp 127.0.0.1:2525\n";
	char text[1024];

	snprintf(text, sizeof(text), "%sdnsbl Zen.Test. score 3 returns 127.0.0.2=4,127.0.0.3=-1 "
	    "127.0.0.4=2.5\ndnswl wl.test score -2\nuribl u.test score 1.5\nhelo-checks no\n", base);
	c = conf_load_string("t.conf", text, &e);
	ok(c != NULL, "dnsbl, dnswl, uribl, helo-checks load %s", e.data ? e.data : "");
	if (c) {
		is_int(c->ndnsbls, 3, "three lists");
		is_str(c->dnsbls[0].zone, "zen.test", "zone lowercased, trailing dot dropped");
		ok(c->dnsbls[0].kind == DNSL_BL && c->dnsbls[1].kind == DNSL_WL &&
		    c->dnsbls[2].kind == DNSL_URI, "kinds in order");
		is_int(c->dnsbls[0].nrets, 3, "returns: comma and blank separated entries");
		ok(c->dnsbls[0].nrets == 3 && c->dnsbls[0].rets[1].addr[3] == 3 &&
		    c->dnsbls[0].rets[1].score == -1 && c->dnsbls[0].rets[2].score == 2.5,
		    "returns: addresses and scores");
		ok(c->dnsbls[0].score == 3 && c->dnsbls[1].score == -2 && c->dnsbls[2].score == 1.5,
		    "list scores");
		ok(!c->helo_checks, "helo-checks no");
		conf_free(c);
	}
	buf_reset(&e);
	c = conf_load_string("t.conf", base, &e);
	ok(c && c->helo_checks && c->ndnsbls == 0, "defaults: helo-checks yes, no lists");
	conf_free(c);
	buf_reset(&e);
	snprintf(text, sizeof(text), "%sdnsbl %0170d.test score 1\n", base, 0);
	c = conf_load_string("t.conf", text, &e);
	ok(c == NULL && e.data && strstr(e.data, "t.conf:3: dnsbl:") != NULL,
	    "a zone too long for a v6 nibble name is refused with FILE:LINE (%s)", e.data ? e.data : "");
	conf_free(c);
	buf_free(&e);
}

static void
dns(const char *server)
{
	struct moat_conf c;
	struct resolver *r;
	struct dns_answer a, m[6];
	char *err = NULL, name[256], why[200];
	double t0, dt;

	memset(&c, 0, sizeof(c));
	c.resolver = (char *)server;
	c.resolver_timeout = 1;
	r = resolver_new(&c, &err);
	ok(r != NULL, "resolver_new forwarding to %s %s", server, err ? err : "");
	if (r == NULL)
		return;

	is_int(resolver_query(r, "a.res.test", DNS_T_A, &a), DNS_OK, "A: DNS_OK");
	is_int(a.n, 2, "two A records");
	ok(a.n == 2 && ((!strcmp(a.text[0], "127.0.0.2") && !strcmp(a.text[1], "127.0.0.3")) ||
	    (!strcmp(a.text[0], "127.0.0.3") && !strcmp(a.text[1], "127.0.0.2"))), "A text forms");
	ok(a.n >= 1 && a.len[0] == 4 && a.data[0][0] == 127, "A rdata: 4 bytes");
	dns_answer_free(&a);
	is_int(resolver_query(r, "a.res.test", DNS_T_TXT, &a), DNS_OK, "TXT: DNS_OK");
	ok(a.n == 1 && !strcmp(a.text[0], "v=spf1 -all"), "TXT text");
	dns_answer_free(&a);
	is_int(resolver_query(r, "two.res.test", DNS_T_TXT, &a), DNS_OK, "TXT in two strings");
	ok(a.n == 1 && !strcmp(a.text[0], "twostrings"), "strings concatenated");
	dns_answer_free(&a);
	is_int(resolver_query(r, "a.res.test", DNS_T_MX, &a), DNS_NODATA, "name without that type: NODATA");
	dns_answer_free(&a);
	is_int(resolver_query(r, "nope.res.test", DNS_T_A, &a), DNS_NXDOMAIN, "unknown name: NXDOMAIN");
	dns_answer_free(&a);
	is_int(resolver_query(r, "sf.res.test", DNS_T_A, &a), DNS_TEMPFAIL, "SERVFAIL: TEMPFAIL");
	dns_answer_free(&a);
	is_int(resolver_query(r, "", DNS_T_A, &a), DNS_PERMFAIL, "empty name: PERMFAIL, no query");
	dns_answer_free(&a);

	/* FCrDNS (the filter skips loopback clients, the function does not) */
	is_int(helo_fcrdns(r, "192.0.2.10", name, sizeof(name), why, sizeof(why)), HELO_RDNS_OK,
	    "FCrDNS: PTR name resolves back %s", why);
	is_str(name, "mail.good.test", "verified name");
	is_int(helo_fcrdns(r, "192.0.2.11", name, sizeof(name), why, sizeof(why)), HELO_RDNS_MISMATCH,
	    "FCrDNS: PTR name with another address: MISMATCH");
	is_int(helo_fcrdns(r, "192.0.2.12", name, sizeof(name), why, sizeof(why)), HELO_RDNS_NONE,
	    "FCrDNS: no PTR: NONE");
	is_int(helo_fcrdns(r, "2001:db8::10", name, sizeof(name), why, sizeof(why)), HELO_RDNS_OK,
	    "FCrDNS over IPv6 (ip6.arpa, AAAA) %s", why);
	is_str(name, "mail6.good.test", "verified v6 name");

	{
		/* a deadline already passed: nothing is asked */
		const char *nm[1] = { "a.res.test" };
		int ty[1] = { DNS_T_A };
		is_int(resolver_query_many_by(r, nm, ty, 1, &a, mono_ms() - 1), 0, "deadline passed: nothing asked");
		ok(a.status == DNS_TEMPFAIL && a.n == 0, "and the slot is TEMPFAIL (%s)", a.why);
		dns_answer_free(&a);
	}

	/* the batch: answers and failures mixed, each slot filled */
	{
		const char *names[] = { "a.res.test", "nope.res.test", "a.res.test", "sf.res.test", "", "aaaa.res.test" };
		int types[] = { DNS_T_A, DNS_T_A, DNS_T_TXT, DNS_T_A, DNS_T_A, DNS_T_AAAA };
		size_t got = resolver_query_many(r, names, types, 6, m);
		is_int(got, 4, "batch: 4 answers (A, NXDOMAIN, TXT, AAAA)");
		ok(m[0].status == DNS_OK && m[1].status == DNS_NXDOMAIN && m[2].status == DNS_OK &&
		    m[3].status == DNS_TEMPFAIL && m[4].status == DNS_PERMFAIL && m[5].status == DNS_OK,
		    "batch: each status in its slot (%d %d %d %d %d %d)", m[0].status, m[1].status,
		    m[2].status, m[3].status, m[4].status, m[5].status);
		ok(m[5].n == 1 && !strcmp(m[5].text[0], "2001:db8::5"), "batch: AAAA text");
		for (int i = 0; i < 6; i++)
			dns_answer_free(&m[i]);
	}

	/* timeouts last: the server never answers these names */
	t0 = now();
	is_int(resolver_query(r, "to.res.test", DNS_T_A, &a), DNS_TEMPFAIL, "no answer: TEMPFAIL");
	dt = now() - t0;
	ok(dt < 1.8, "within resolver-timeout 1s (%.2fs)", dt);
	ok(strstr(a.why, "timeout") != NULL || strstr(a.why, "SERVFAIL") != NULL, "why: %s", a.why);
	dns_answer_free(&a);
	{
		const char *names[] = { "to1.res.test", "to2.res.test", "to3.res.test", "to4.res.test",
		    "to5.res.test", "to6.res.test" };
		int types[] = { DNS_T_A, DNS_T_A, DNS_T_A, DNS_T_TXT, DNS_T_A, DNS_T_A };
		t0 = now();
		size_t got = resolver_query_many(r, names, types, 6, m);
		dt = now() - t0;
		is_int(got, 0, "batch of 6 timeouts: no answer");
		ok(dt < 1.8, "6 timeouts share one deadline (%.2fs, not 6s)", dt);
		int tf = 0;
		for (int i = 0; i < 6; i++) {
			tf += m[i].status == DNS_TEMPFAIL;
			dns_answer_free(&m[i]);
		}
		is_int(tf, 6, "all TEMPFAIL");
	}
	{
		/* the caller's deadline, shorter than resolver-timeout */
		const char *nm[2] = { "to1.res.test", "a.res.test" };
		int ty[2] = { DNS_T_A, DNS_T_TXT };
		t0 = now();
		size_t got = resolver_query_many_by(r, nm, ty, 2, m, mono_ms() + 300);
		dt = now() - t0;
		ok(got == 1 && m[0].status == DNS_TEMPFAIL && m[1].status == DNS_OK,
		    "resolver_query_many_by: the answer and a timeout at the caller's deadline");
		ok(dt > 0.25 && dt < 0.8, "the caller's deadline (300 ms) applies, not resolver-timeout (%.2fs)", dt);
		dns_answer_free(&m[0]);
		dns_answer_free(&m[1]);
	}
	t0 = now();
	is_int(helo_fcrdns(r, "192.0.2.13", name, sizeof(name), why, sizeof(why)), HELO_RDNS_TEMPFAIL,
	    "FCrDNS: PTR lookup times out: TEMPFAIL (%s)", why);
	dt = now() - t0;
	ok(dt < 1.5, "within resolver-timeout (%.2fs)", dt);
	{
		unsigned long long q, f, to;
		resolver_stats(r, &q, &f, &to);
		ok(q >= 20 && f >= 7, "stats: queries=%llu failures=%llu timeouts=%llu", q, f, to);
	}
	resolver_free(r);
}

int
main(void)
{
	const char *server = getenv("MOAT_TEST_DNS");

	helpers();
	conf_checks();
	if (server && *server)
		dns(server);
	else
		printf("# MOAT_TEST_DNS not set: the DNS checks run from tests/integration/test_dnsbl.py\n");
	return t_done();
}
