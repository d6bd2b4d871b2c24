/* test_geoip.c - the geoip filter on chosen client addresses, with
 * MaxMind's test databases (../shared/testdata/geoip/test-data): country
 * and ASN symbols, configured scores, unknown and malformed addresses,
 * wrong or broken database files */
#include "config.h"
#include "t.h"
#include "buf.h"
#include "conf.h"
#include "engine.h"
#include "filter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern const struct filter filter_geoip;

static char dir[4096];

static struct moat_conf *
conf(const char *country, const char *asn, const char *more)
{
	struct buf text = BUF_INIT, errs = BUF_INIT;
	struct moat_conf *c;

	buf_printf(&text, "state-dir /tmp\n");
	if (country)
		buf_printf(&text, "geoip %s/%s\n", dir, country);
	if (asn)
		buf_printf(&text, "geoip-asn %s/%s\n", dir, asn);
	if (more)
		buf_printf(&text, "%s\n", more);
	c = conf_load_string("t.conf", text.data, &errs);
	if (c == NULL)
		printf("# %s", errs.data);
	buf_free(&text);
	buf_free(&errs);
	return c;
}

/* run the filter for ip; the symbols as "NAME(score)," into out */
static void
run(void *st, const char *ip, char *out, size_t outsz)
{
	struct msg_ctx x;
	struct verdict v;
	size_t o = 0;

	memset(&x, 0, sizeof(x));
	memset(&v, 0, sizeof(v));
	x.qid = "TEST";
	x.client_ip = ip;
	filter_geoip.check(st, &x, &v);
	out[0] = '\0';
	for (size_t i = 0; i < v.nsym && o < outsz; i++)
		o += (size_t)snprintf(out + o, outsz - o, "%s(%.1f),", v.sym[i].name, v.sym[i].score);
	verdict_clear(&v);
}

static const char *
reason_of(void *st, const char *ip, const char *sym, char *out, size_t outsz)
{
	struct msg_ctx x;
	struct verdict v;

	memset(&x, 0, sizeof(x));
	memset(&v, 0, sizeof(v));
	x.qid = "TEST";
	x.client_ip = ip;
	filter_geoip.check(st, &x, &v);
	out[0] = '\0';
	for (size_t i = 0; i < v.nsym; i++)
		if (!strcmp(v.sym[i].name, sym))
			snprintf(out, outsz, "%s", v.sym[i].reason);
	verdict_clear(&v);
	return out;
}

int
main(void)
{
	const char *src = getenv("MOAT_SRCDIR");
	struct moat_conf *c;
	void *st = NULL;
	char *err = NULL, out[512], r[200];

	snprintf(dir, sizeof(dir), "%s/../shared/testdata/geoip/test-data", src ? src : "..");
	if (access(dir, R_OK) < 0) {
		printf("1..0 # SKIP %s absent (the shared test data)\n", dir);
		return 0;
	}

	/* not configured: no state, nothing to do */
	c = conf(NULL, NULL, NULL);
	ok(c && filter_geoip.init(c, &st, &err) == 0 && st == NULL, "not configured: no state");
	conf_free(c);

	c = conf("GeoIP2-Country-Test.mmdb", "GeoLite2-ASN-Test.mmdb",
	    "score GEOIP_COUNTRY_CN 3.5\nscore GEOIP_ASN_1221 -1");
	ok(c != NULL, "config with geoip, geoip-asn and scores loads");
	if (c == NULL)
		return t_done();
	ok(filter_geoip.init(c, &st, &err) == 0 && st != NULL, "both databases open (%s)",
	    err ? err : "");

	run(st, "2.125.160.216", out, sizeof(out));
	is_str(out, "GEOIP_COUNTRY_GB(0.0),", "2.125.160.216 is GB, score 0 by default");
	run(st, "81.2.69.160", out, sizeof(out));
	is_str(out, "GEOIP_COUNTRY_GB(0.0),", "81.2.69.160 is GB");
	run(st, "89.160.20.112", out, sizeof(out));
	is_str(out, "GEOIP_COUNTRY_SE(0.0),GEOIP_ASN_29518(0.0),",
	    "89.160.20.112 is SE (country, not registered_country DE) in AS29518");
	run(st, "175.16.199.1", out, sizeof(out));
	is_str(out, "GEOIP_COUNTRY_CN(3.5),", "a configured score applies (score GEOIP_COUNTRY_CN 3.5)");
	run(st, "2001:218::1", out, sizeof(out));
	is_str(out, "GEOIP_COUNTRY_JP(0.0),", "IPv6 2001:218::1 is JP");
	run(st, "::ffff:2.125.160.216", out, sizeof(out));
	is_str(out, "GEOIP_COUNTRY_GB(0.0),", "a v4-mapped address is looked up as v4");
	run(st, "1.128.0.1", out, sizeof(out));
	is_str(out, "GEOIP_ASN_1221(-1.0),", "1.128.0.1 is AS1221 with its configured score, no country");
	is_str(reason_of(st, "1.128.0.1", "GEOIP_ASN_1221", r, sizeof(r)), "AS1221 Telstra Pty Ltd",
	    "the ASN reason names the organisation");
	run(st, "12.81.96.1", out, sizeof(out));
	is_str(out, "GEOIP_ASN_7018(0.0),", "an ASN record without an organisation");
	run(st, "214.78.120.5", out, sizeof(out));
	is_str(out, "GEOIP_COUNTRY_US(0.0),GEOIP_ASN_721(0.0),", "214.78.120.5: US, AS721");
	run(st, "127.0.0.1", out, sizeof(out));
	is_str(out, "", "loopback: in neither database, no symbol");
	run(st, "10.1.2.3", out, sizeof(out));
	is_str(out, "", "a private address: no symbol");
	run(st, "not-an-ip", out, sizeof(out));
	is_str(out, "", "a malformed address: no symbol, no crash");
	run(st, "", out, sizeof(out));
	is_str(out, "", "no address: nothing");
	filter_geoip.fini(st);
	st = NULL;
	conf_free(c);

	/* a City database serves as well; ASN alone works */
	c = conf("GeoIP2-City-Test.mmdb", NULL, NULL);
	ok(c && filter_geoip.init(c, &st, &err) == 0 && st, "a City database opens");
	if (st) {
		run(st, "81.2.69.160", out, sizeof(out));
		is_str(out, "GEOIP_COUNTRY_GB(0.0),", "City database: 81.2.69.160 is GB");
		filter_geoip.fini(st);
		st = NULL;
	}
	conf_free(c);

	/* mistakes are errors at init (moatd -n shows them) */
	c = conf("GeoLite2-ASN-Test.mmdb", NULL, NULL);
	ok(c && filter_geoip.init(c, &st, &err) < 0 && st == NULL && err && strstr(err, "geoip-asn"),
	    "an ASN database given to geoip is refused (%s)", err ? err : "");
	free(err);
	err = NULL;
	conf_free(c);
	c = conf(NULL, "GeoIP2-Country-Test.mmdb", NULL);
	ok(c && filter_geoip.init(c, &st, &err) < 0 && err, "a Country database given to geoip-asn is refused (%s)",
	    err ? err : "");
	free(err);
	err = NULL;
	conf_free(c);
	c = conf("README.md", NULL, NULL);
	ok(c && filter_geoip.init(c, &st, &err) < 0 && err && strstr(err, "README.md"),
	    "a file that is not a MaxMind DB is refused (%s)", err ? err : "");
	free(err);
	err = NULL;
	conf_free(c);
	c = conf("GeoIP2-City-Test-Invalid-Node-Count.mmdb", NULL, NULL);
	if (c && filter_geoip.init(c, &st, &err) == 0 && st) {
		/* libmaxminddb opened it: lookups must fail cleanly */
		run(st, "81.2.69.160", out, sizeof(out));
		ok(strstr(out, "GEOIP_COUNTRY_GB") || strstr(out, "GEOIP_ERROR") || out[0] == '\0',
		    "a corrupt database: no crash (%s)", out);
		filter_geoip.fini(st);
		st = NULL;
	} else
		ok(err != NULL, "a corrupt database is refused at init (%s)", err ? err : "");
	free(err);
	err = NULL;
	conf_free(c);
	c = conf("GeoIP2-City-Test-Broken-Double-Format.mmdb", NULL, NULL);
	if (c && filter_geoip.init(c, &st, &err) == 0 && st) {
		run(st, "81.2.69.160", out, sizeof(out));
		ok(1, "a database with broken data: lookup survives (%s)", out);
		filter_geoip.fini(st);
		st = NULL;
	} else
		ok(err != NULL, "a database with broken data is refused at init (%s)", err ? err : "");
	free(err);
	conf_free(c);

	/* the config parser checks the file is readable, with FILE:LINE */
	{
		struct buf e = BUF_INIT;
		c = conf_load_string("t.conf", "state-dir /tmp\ngeoip /nonexistent/x.mmdb\n", &e);
		ok(c == NULL && e.data && strstr(e.data, "t.conf:2: geoip: cannot read"),
		    "an unreadable geoip file is a FILE:LINE error (%s)", e.data ? e.data : "");
		conf_free(c);
		buf_free(&e);
	}
	return t_done();
}
