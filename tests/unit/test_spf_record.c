/*
 * test_spf_record.c - unit tests of filters/spf_record.c: the RFC 7208
 * grammar checks moat applies before libspf2 sees a record, and the
 * canonical text it hands libspf2 (redirect last and dropped beside "all",
 * /0 prefixes, unknown modifiers dropped), byte by byte on hostile input;
 * the expansion of explanation text (RFC 7208 7.4's examples).
 */
#include "config.h"
#include "spf_record.h"
#include "t.h"

#include <stdio.h>
#include <string.h>

static const char *
canon(const char *rec, bool v6)
{
	static char out[SPF_RECORD_MAX + 64];
	const char *why;

	if (spf_record_check(rec, strlen(rec), v6, out, sizeof(out), &why) < 0)
		return "ERR";
	return out;
}

static void
test_valid(void)
{
	is_str(canon("v=spf1", false), "v=spf1", "empty record");
	is_str(canon("V=SPF1  -all  ", false), "v=spf1 -all", "case, extra spaces");
	is_str(canon("v=spf1 a mx:example.com/24//64 ip4:192.0.2.0/24 ~all", false),
	    "v=spf1 a mx:example.com/24 ip4:192.0.2.0/24 ~all", "IPv4 client: the IPv6 prefix dropped");
	is_str(canon("v=spf1 a mx:example.com/24//64 -all", true),
	    "v=spf1 a mx:example.com//64 -all", "IPv6 client: the IPv4 prefix dropped");
	is_str(canon("v=spf1 redirect=b.example.com ip4:192.0.2.1", false),
	    "v=spf1 ip4:192.0.2.1 redirect=b.example.com", "redirect goes last");
	is_str(canon("v=spf1 redirect=b.example.com -all", false), "v=spf1 -all",
	    "redirect beside all is ignored (RFC 7208 6.1)");
	is_str(canon("v=spf1 -all ip4:192.0.2.1", false), "v=spf1 -all", "terms after all dropped");
	is_str(canon("v=spf1 foo=%{l}bar moo.cow-far_out=man:dog/cat ?all", false), "v=spf1 ?all",
	    "unknown modifiers are checked and dropped");
	is_str(canon("v=spf1 ip4:192.0.2.1/0 -all", false),
	    "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 -all", "ip4 /0: two halves");
	is_str(canon("v=spf1 -ip6:::1/0", true), "v=spf1 -ip6:::/1 -ip6:8000::/1", "ip6 /0: two halves");
	is_str(canon("v=spf1 a/0 -all", false), "v=spf1 a:%{d}" SPF_CIDR0_SUFFIX " -all",
	    "a/0: the marked current domain");
	is_str(canon("v=spf1 mx:e.example.com//0 -all", true),
	    "v=spf1 mx:e.example.com" SPF_CIDR0_SUFFIX " -all", "mx//0 for IPv6: the marked domain");
	is_str(canon("v=spf1 exists:%{ir}.%{l1r+-}.%{d2}.example.com exp=%{d}", false),
	    "v=spf1 exists:%{ir}.%{l1r+-}.%{d2}.example.com exp=%{d}", "macros");
	is_str(canon("v=spf1 a:macro%%percent%_%_space%-url-space.example.com", false),
	    "v=spf1 a:macro%%percent%_%_space%-url-space.example.com", "%s", "%% %_ %-");
	is_str(canon("v=spf1 a:example.com. -all", false), "v=spf1 a:example.com. -all", "final dot");
	is_str(canon("v=spf1 exists:%{d1000r}.%{L129r+-=}.%{i128}.x.example redirect=%{o200}", false),
	    "v=spf1 exists:%{d128r}.%{L128r+-=}.%{i128}.x.example redirect=%{o128}",
	    "transformers over 128 written as 128");
	is_str(canon("v=spf1 a:foo-bar.123-4 -all", false), "v=spf1 a:foo-bar.123-4 -all",
	    "numeric toplabel with a hyphen");
}

static void
test_invalid(void)
{
	static const char *bad[] = {
		"v=spf1 ip4:1.2.3.4/33",        /* prefix out of range */
		"v=spf1 ip4:1.2.3.4/032",       /* leading zero */
		"v=spf1 ip6:::1/129",
		"v=spf1 ip4:1.2.3",
		"v=spf1 ip4:1.2.3.4.5",
		"v=spf1 ip4:",
		"v=spf1 ip6:1.2.3.4",
		"v=spf1 a:1.2.3.4",             /* all-numeric toplabel */
		"v=spf1 a:example.-com",
		"v=spf1 a:localhost",           /* no domain-end */
		"v=spf1 a:",
		"v=spf1 mx: -all",
		"v=spf1 include",
		"v=spf1 include:",
		"v=spf1 exists",
		"v=spf1 ptr/24",
		"v=spf1 all:foo",
		"v=spf1 -all/8",
		"v=spf1 foo",                   /* unknown mechanism */
		"v=spf1 ip4:1.2.3.4\t-all",     /* tab is not SP */
		"v=spf1 a:foo.example.com\x01",
		"v=spf1 a:b\xc3\xa4r.example.com",
		"v=spf1 redirect=a.example.com redirect=b.example.com",
		"v=spf1 exp=a.example.com exp=b.example.com",
		"v=spf1 exists:%{x}.example.com",
		"v=spf1 exists:%{d0}.example.com",
		"v=spf1 exists:%(ir).example.com",
		"v=spf1 exists:foo%.example.com",
		"v=spf1 exists:%{d",
		"v=spf1 exists:%",
		"v=spf1 a:%{c}.example.com",    /* c only in exp text */
		"v=spf1 =foo",
		"v=spf1 -redirect=a.example.com",
		"v=spf1 a:x" SPF_CIDR0_SUFFIX,  /* reserved */
		"v=spf10",
		"spf1 -all",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		is_str(canon(bad[i], false), "ERR", "refused: %s", bad[i]);
}

static void
test_hostile(void)
{
	char big[SPF_RECORD_MAX + 100], out[64];
	const char *why;

	/* the output buffer is bounded */
	memset(big, 0, sizeof(big));
	memcpy(big, "v=spf1", 6);
	for (size_t o = 6; o + 20 < SPF_RECORD_MAX; o += 16)
		memcpy(big + o, " ip4:192.0.2.1  ", 16);
	ok(spf_record_check(big, strlen(big), false, out, sizeof(out), &why) < 0 && out[0] == '\0',
	    "a canon buffer too small: refused, nothing half-written");
	memset(big, 'a', sizeof(big) - 1);
	memcpy(big, "v=spf1 ", 7);
	ok(spf_record_check(big, sizeof(big) - 1, false, out, sizeof(out), &why) < 0,
	    "longer than SPF_RECORD_MAX: refused");
	/* an embedded NUL is seen through the explicit length */
	ok(spf_record_check("v=spf1 a:foo.example.com\0", 25, false, out, sizeof(out), &why) < 0,
	    "NUL inside the record: refused");
	/* every prefix of a valid record is handled without reading past it */
	{
		const char *r = "v=spf1 a:%{l1r-}.example.com/24//64 ip6:2001:db8::/32 redirect=%{d}";
		char c[512];
		int n = 0;
		for (size_t l = 0; l <= strlen(r); l++) {
			char tmp[128];
			memcpy(tmp, r, l);      /* no NUL: only the length bounds */
			if (spf_record_check(tmp, l, false, c, sizeof(c), &why) == 0)
				n++;
		}
		ok(n > 0, "prefixes of a record: checked by length only (%d valid)", n);
	}
	ok(spf_record_is_v1("v=spf1", 6) && spf_record_is_v1("v=spf1 -all", 11) &&
	    !spf_record_is_v1("v=spf10", 7) && !spf_record_is_v1("v=spf1", 5),
	    "spf_record_is_v1: \"v=spf1\" then SP or end");
	ok(spf_domain_ok("example.com") && spf_domain_ok("example.com.") &&
	    !spf_domain_ok("A...example.com") && !spf_domain_ok("A2345678") &&
	    !spf_domain_ok("192.0.2.1") && spf_domain_ok("1.2.example") &&
	    !spf_domain_ok("a1234567890123456789012345678901234567890123456789012345678901234.example.com"),
	    "spf_domain_ok: empty labels, one label, an address, a label over 63");
}

static void
test_expand(void)
{
	struct spf_macro_vals v = {
		.s = "strong-bad@email.example.com", .l = "strong-bad", .o = "email.example.com",
		.d = "email.example.com", .i = "192.0.2.3", .p = "unknown", .v = "in-addr",
		.h = "mx.example.org", .c = "192.0.2.3", .r = "mx.example.net", .t = "1",
	};
	char out[256], small[8];
	const char *why;
	static const struct { const char *in, *want; } t[] = {
		/* RFC 7208 7.4 examples */
		{ "%{s}", "strong-bad@email.example.com" },
		{ "%{o}", "email.example.com" },
		{ "%{d4}", "email.example.com" },
		{ "%{d2}", "example.com" },
		{ "%{d1}", "com" },
		{ "%{dr}", "com.example.email" },
		{ "%{d2r}", "example.email" },
		{ "%{l}", "strong-bad" },
		{ "%{l-}", "strong.bad" },
		{ "%{lr}", "strong-bad" },
		{ "%{lr-}", "bad.strong" },
		{ "%{l1r-}", "strong" },
		{ "%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com" },
		{ "%{S}", "strong-bad%40email.example.com" },
		{ "a %% b %_ c %- d", "a % b   c %20 d" },
		{ "from %{c} to %{r}", "from 192.0.2.3 to mx.example.net" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int rc = spf_expand_exp(t[i].in, strlen(t[i].in), &v, out, sizeof(out), &why);
		ok(rc == 0 && strcmp(out, t[i].want) == 0, "expand %s -> %s (got %s)", t[i].in,
		    t[i].want, rc == 0 ? out : why);
	}
	ok(spf_expand_exp("The%{x}-files.", 14, &v, out, sizeof(out), &why) < 0, "expand: bad letter");
	ok(spf_expand_exp("50%", 3, &v, out, sizeof(out), &why) < 0, "expand: lone %%");
	ok(spf_expand_exp("caf\xc3\xa9", 5, &v, out, sizeof(out), &why) < 0, "expand: 8-bit text");
	ok(spf_expand_exp("%{d0}", 5, &v, out, sizeof(out), &why) < 0, "expand: transformer 0");
	ok(spf_expand_exp("%{s}", 4, &v, small, sizeof(small), &why) < 0 && small[0] == '\0',
	    "expand: output bounded");
}

int
main(void)
{
	test_valid();
	test_invalid();
	test_hostile();
	test_expand();
	return t_done();
}
