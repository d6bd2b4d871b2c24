/*
 * test_rules.c - filters/rules.c: each rule type, meta arithmetic, tflags
 * multiple/maxhits, if/ifplugin, eval: skipped and counted, bad regex
 * reported as FILE:LINE and skipped, Perl -> PCRE2 translation, and a
 * pathological regex stopped by the match limit.
 */
#include "config.h"
#include "mime.h"
#include "rules.h"
#include "buf.h"
#include "util.h"
#include "t.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpl[] = "/tmp/test_rules.XXXXXX";

static char *
write_rules(const char *name, const char *text)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", tmpl, name);
	f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	return xstrdup(path);
}

static bool
hit(const struct rules_hits *h, const char *name, unsigned *count)
{
	for (size_t i = 0; i < h->n; i++)
		if (strcmp(h->v[i].name, name) == 0) {
			if (count)
				*count = h->v[i].count;
			return true;
		}
	return false;
}

/* rules_uri_variants() collected as "|v1|v2|...|" */
static void
collect(void *arg, const char *s, size_t len)
{
	struct buf *b = arg;

	buf_add(b, s, len);
	buf_addc(b, '|');
}

static bool
has_variant(const char *uri, const char *want)
{
	struct buf b = BUF_INIT;
	char w[512];
	bool r;

	buf_addc(&b, '|');
	rules_uri_variants(uri, strlen(uri), collect, &b);
	snprintf(w, sizeof(w), "|%s|", want);
	r = strstr(b.data, w) != NULL;
	if (!r)
		printf("#   variants of %s: %s\n", uri, b.data);
	buf_free(&b);
	return r;
}

static void
count_chunk(void *arg, const char *s, size_t len)
{
	size_t *v = arg;

	(void)s;
	v[0]++;
	if (len > v[1])
		v[1] = len;
	v[2] += len;
}

/* a message for SpamAssassin's semantics: raw parts, raw URIs, headers */
static const char SA_MSG[] =
    "Message-Id: <000d01ca53a0$8d3d5480$6400a8c0@host>\n"
    "From: a@example.test\n"
    "Subject: test\n"
    "Content-Type: multipart/alternative;\n"
    "\tboundary=\"----=_NextPart_000_0007_01CA53A0.8D3D5480\"\n"
    "\n"
    "------=_NextPart_000_0007_01CA53A0.8D3D5480\n"
    "Content-Type: text/plain; charset=iso-8859-1\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "un caf=E9 write to unsub@list.example.com. or www.Shop.example/a).\n"
    "------=_NextPart_000_0007_01CA53A0.8D3D5480\n"
    "Content-Type: text/html; charset=iso-8859-1\n"
    "\n"
    "<html><body background=\"smart%20x/a.gif\">\n"
    "<a href=\"HTTP://Example.COM/Path\">Big Pills.</a><p>You <b>one</b><td>two\n"
    "<a href=\"http://%77%77%77.example.net/\">x</a><br><br>\n"
    "<span href=\"http://notauri.example/\">y</span>\n"
    "</body></html>\n"
    "------=_NextPart_000_0007_01CA53A0.8D3D5480--\n";

static const char SA_RULES[] =
    "rawbody SR_8BIT   /caf\\xe9/\n"
    "rawbody SR_UTF8   /caf\\xc3\\xa9/\n"
    "rawbody SR_HTML   /<br>\\s*<br>/i\n"
    "header  SR_CT     Content-Type =~ /^multipart\\/alternative/\n"
    "header  SR_ALL    ALL =~ /^Message-Id: <....([0-9a-f]{8})\\$([0-9a-f]{8})\\$[0-9a-f]{8}\\@.{10,400}boundary=\"----=_NextPart_000_...._\\1\\.\\2\"/msi\n"
    "uri     SR_CASE   /^HTTP:\\/\\/Example\\.COM\\/Path$/\n"
    "uri     SR_LOWER  /^http:\\/\\/example\\.com/\n"
    "uri     SR_UNESC  m{^http://www\\.example\\.net/$}\n"
    "uri     SR_ESC    m{^http://%77}\n"
    "uri     SR_MAILTO /^mailto:unsub\\@list\\.example\\.com$/\n"
    "uri     SR_WWW    m{^http://www\\.Shop\\.example/a$}\n"
    "uri     SR_BG     m{^http://smart%20x/a\\.gif$}\n"
    "uri     SR_SPAN   /notauri/\n"
    "body    SR_PARA   /Pills\\. You/\n"
    "body    SR_TD     /one two/\n";

static const char MSG[] =
    "Received: from a.example (a.example [192.0.2.1])\n\tby b.example; Tue, 3 Nov 2026 10:00:00 +0000\n"
    "From: \"Bank Team\" <team@bank.example>\n"
    "To: bob@example.net\n"
    "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= and WIN money\n"
    "Date: Tue, 3 Nov 2026 10:00:00 +0000\n"
    "Reply-To: other@elsewhere.example\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "Dear friend, you won a prize!! yes!! really!! win win win\n"
    "second line of the paragraph\n"
    "\n"
    "Visit http://198.51.100.7/x and http://example.com/ok now.\n";

static const char RULES[] =
    "# a comment\n"
    "header   H_SUBJ      Subject =~ /grüße/i\n"
    "header   H_SUBJ_RAW  Subject:raw =~ /=\\?utf-8\\?q\\?/\n"
    "header   H_ADDR      From:addr =~ /^team\\@bank\\.example$/\n"
    "header   H_NAME      From:name =~ /^Bank Team$/\n"
    "header   H_EXISTS    exists:Reply-To\n"
    "header   H_NOTEX     exists:X-Nope\n"
    "header   H_NEG       X-Nope !~ /./\n"
    "header   H_UNSET     X-Nope =~ /^dflt$/ [if-unset: dflt]\n"
    "header   H_ALL       ALL =~ /^Reply-To: other/m\n"
    "body     B_PARA      /win win win second line/\n"
    "body     B_SUBJ      /^Grüße and WIN/\n"
    "body     B_MULTI     /!!/\n"
    "tflags   B_MULTI     multiple maxhits=2\n"
    "body     __B_WIN     /\\bwin\\b/i\n"
    "tflags   __B_WIN     multiple\n"
    "rawbody  R_RAW       /paragraph\\n\\nVisit/\n"
    "full     F_FULL      m{^Reply-To: other\\@elsewhere}m\n"
    "uri      U_IP        m{^http://\\d+\\.\\d+\\.\\d+\\.\\d+/}\n"
    "uri      U_NONE      /nowhere\\.example/\n"
    "meta     M_AND       H_SUBJ && (U_IP || U_NONE)\n"
    "meta     M_ARITH     (__B_WIN * 2 + 1) >= 9 && !U_NONE\n"
    "meta     M_NOT       __B_WIN < 3\n"
    "meta     M_DIV       __B_WIN / 2 == 2\n"
    "score    H_SUBJ      2.5 0 0 0\n"
    "score    B_PARA      0\n"
    "describe H_SUBJ      the subject greets\n"
    "tflags   N_NICE      nice\n"
    "body     N_NICE      /Dear friend/\n"
    "if (version >= 3.004000)\n"
    "body     IF_YES      /Dear/\n"
    "else\n"
    "body     IF_NO       /Dear/\n"
    "endif\n"
    "ifplugin Mail::SpamAssassin::Plugin::Nope\n"
    "body     PLUG_SKIP   /Dear/\n"
    "body     PLUG_EVAL   eval:check_nope()\n"
    "endif\n"
    "if !plugin(Mail::SpamAssassin::Plugin::Nope)\n"
    "body     NOTPLUG     /Dear/\n"
    "endif\n"
    "body     EV          eval:check_something()\n"
    "meta     M_EVAL      EV && IF_YES\n"
    "body     BAD_RE      /(unclosed/\n"
    "body     AFTER_BAD   /Dear/\n"
    "frobnicate something\n"
    "lang de describe H_SUBJ Betreff\n";

int
main(void)
{
	struct rules_report rep;
	struct rules_hits h;
	struct rules *r;
	struct mime_msg *m;
	char *err = NULL, *path, *pat;
	unsigned cnt = 0, opt;
	const char *why;

	mime_init();
	if (mkdtemp(tmpl) == NULL)
		return 1;

	/* Perl -> PCRE2 */
	ok(rules_perl_re("/a\\/b/i", 7, &pat, &opt, &why) == 0 && strcmp(pat, "a\\/b") == 0,
	    "/re/i: pattern");
	ok(opt != 0, "/re/i: caseless option");
	free(pat);
	ok(rules_perl_re("m{x}y}sx", 8, &pat, &opt, &why) == 0 && strcmp(pat, "x}y") == 0,
	    "m{...}: last closing brace ends the regex");
	free(pat);
	ok(rules_perl_re("m!a\\z!m", 7, &pat, &opt, &why) == 0 && strcmp(pat, "a\\z") == 0,
	    "m!...!: \\z kept (PCRE2 knows it)");
	free(pat);
	ok(rules_perl_re("/a/q", 4, &pat, &opt, &why) < 0, "unknown modifier refused: %s", why);
	ok(rules_perl_re("/(?{ 1 })/", 10, &pat, &opt, &why) < 0, "code block refused: %s", why);
	ok(rules_perl_re("abc", 3, &pat, &opt, &why) < 0, "no delimiter refused");

	path = write_rules("t.cf", RULES);
	r = rules_load((const char *const *)&path, 1, &rep, &err);
	ok(r != NULL, "rules load");
	is_int(rep.count[RULES_I_EVAL], 2, "eval: counted (one in a branch not taken)");
	is_int(rep.count[RULES_I_REGEX], 1, "bad regex counted");
	is_int(rep.count[RULES_I_DIRECTIVE], 1, "unknown directive counted");
	is_int(rep.count[RULES_I_META], 1, "meta on an eval rule skipped");
	is_int(rep.hard, 1, "one hard error");
	{
		bool found = false;
		char where[300];
		unsigned line = 1;
		for (const char *q = RULES; q < strstr(RULES, "body     BAD_RE"); q++)
			line += *q == '\n';
		snprintf(where, sizeof(where), "%s:%u", path, line);
		for (size_t i = 0; i < rep.nissues; i++)
			if (rep.issues[i].kind == RULES_I_REGEX && strcmp(rep.issues[i].where, where) == 0 &&
			    strstr(rep.issues[i].text, "BAD_RE"))
				found = true;
		ok(found, "bad regex reported at FILE:LINE (%s)", where);
	}

	m = mime_parse(MSG, sizeof(MSG) - 1, NULL, NULL);
	ok(rules_eval(r, m, MSG, sizeof(MSG) - 1, &h) == 0, "eval");
	for (size_t i = 0; i < h.n; i++)
		printf("# hit %s %.2f x%u\n", h.v[i].name, h.v[i].score, h.v[i].count);
	ok(hit(&h, "H_SUBJ", NULL), "header, decoded");
	ok(hit(&h, "H_SUBJ_RAW", NULL), "header :raw");
	ok(hit(&h, "H_ADDR", NULL), "header :addr");
	ok(hit(&h, "H_NAME", NULL), "header :name");
	ok(hit(&h, "H_EXISTS", NULL), "exists:");
	ok(!hit(&h, "H_NOTEX", NULL), "exists: on a missing header");
	ok(hit(&h, "H_NEG", NULL), "!~ on a missing header");
	ok(hit(&h, "H_UNSET", NULL), "[if-unset:]");
	ok(hit(&h, "H_ALL", NULL), "ALL");
	ok(!hit(&h, "B_PARA", NULL), "score 0 disables a rule");
	ok(hit(&h, "B_SUBJ", NULL), "body sees the Subject first");
	ok(hit(&h, "B_MULTI", &cnt) && cnt == 2, "tflags multiple maxhits=2 (count %u)", cnt);
	ok(!hit(&h, "__B_WIN", NULL), "__ rules are not reported");
	ok(hit(&h, "R_RAW", NULL), "rawbody keeps lines");
	ok(hit(&h, "F_FULL", NULL), "full");
	ok(hit(&h, "U_IP", NULL) && !hit(&h, "U_NONE", NULL), "uri");
	ok(hit(&h, "M_AND", NULL), "meta && ||");
	ok(hit(&h, "M_ARITH", NULL), "meta arithmetic");
	ok(!hit(&h, "M_NOT", NULL), "meta comparison false");
	ok(hit(&h, "M_DIV", NULL), "meta division");
	ok(hit(&h, "N_NICE", NULL), "nice rule hits");
	for (size_t i = 0; i < h.n; i++) {
		if (strcmp(h.v[i].name, "N_NICE") == 0)
			ok(h.v[i].score < 0, "nice default score is negative");
		if (strcmp(h.v[i].name, "H_SUBJ") == 0) {
			ok(h.v[i].score == 2.5, "first score of four used");
			is_str(h.v[i].desc, "the subject greets", "describe");
		}
	}
	ok(hit(&h, "IF_YES", NULL) && !hit(&h, "IF_NO", NULL), "if version / else");
	ok(!hit(&h, "PLUG_SKIP", NULL), "ifplugin of a missing plugin skipped");
	ok(hit(&h, "NOTPLUG", NULL), "if !plugin() taken");
	ok(!hit(&h, "EV", NULL) && !hit(&h, "M_EVAL", NULL), "eval rule and its meta skipped");
	ok(hit(&h, "AFTER_BAD", NULL), "rules after a bad regex still load");
	rules_hits_free(&h);
	mime_free(&m);
	rules_free(&r);
	rules_report_free(&rep);
	unlink(path);
	free(path);

	/* SpamAssassin's semantics: rawbody on the decoded parts in their
	 * own charset with HTML unrendered, uri rules on the raw URIs plus
	 * the canonical variants, Content-* headers seen by header rules */
	path = write_rules("sa.cf", SA_RULES);
	r = rules_load((const char *const *)&path, 1, &rep, &err);
	ok(r != NULL && rep.hard == 0, "SA semantics rules load");
	m = mime_parse(SA_MSG, sizeof(SA_MSG) - 1, NULL, NULL);
	ok(rules_eval(r, m, SA_MSG, sizeof(SA_MSG) - 1, &h) == 0, "SA semantics eval");
	for (size_t i = 0; i < h.n; i++)
		printf("# hit %s\n", h.v[i].name);
	ok(hit(&h, "SR_8BIT", NULL), "rawbody matches the part's own charset (ISO-8859-1 byte)");
	ok(!hit(&h, "SR_UTF8", NULL), "rawbody is not converted to UTF-8");
	ok(hit(&h, "SR_HTML", NULL), "rawbody sees the HTML source, not the rendering");
	ok(hit(&h, "SR_CT", NULL), "Content-Type of the message seen by header rules");
	ok(hit(&h, "SR_ALL", NULL), "ALL holds Message-Id .. Content-Type in order");
	ok(hit(&h, "SR_CASE", NULL), "uri: href as written, case kept");
	ok(!hit(&h, "SR_LOWER", NULL), "uri: no lowercased variant of an ASCII host");
	ok(hit(&h, "SR_UNESC", NULL) && hit(&h, "SR_ESC", NULL),
	    "uri: %%-escaped host both raw and decoded");
	ok(hit(&h, "SR_MAILTO", NULL), "uri: address in text as mailto:, trailing dot dropped");
	ok(hit(&h, "SR_WWW", NULL), "uri: www. in text gets http://, \")\" without \"(\" ends it");
	ok(hit(&h, "SR_BG", NULL), "uri: body background, scheme added");
	ok(!hit(&h, "SR_SPAN", NULL), "uri: href of a tag HTML.pm ignores is not a URI");
	ok(!hit(&h, "SR_PARA", NULL), "body: <p> is a paragraph break");
	ok(hit(&h, "SR_TD", NULL), "body: <td> is a space");
	rules_hits_free(&h);
	mime_free(&m);
	rules_free(&r);
	rules_report_free(&rep);
	unlink(path);
	free(path);

	/* with util_rb_tld loaded, a URI found in text counts only when its
	 * host is under a known TLD (or an IP); HTML URIs always count */
	{
		static const char msg[] =
		    "Subject: t\nContent-Type: text/html\n\n"
		    "point it at http://yourserver:2301/ or http://a.example.com:2301/\n"
		    "or http://192.0.2.9:2301/ <a href=\"http://intranet:81/\">x</a>\n";
		path = write_rules("tld.cf",
		    "util_rb_tld com net\n"
		    "uri T_SERVER /yourserver/\nuri T_COM /a\\.example\\.com/\n"
		    "uri T_IP /192\\.0\\.2\\.9/\nuri T_HREF /intranet/\n");
		r = rules_load((const char *const *)&path, 1, &rep, &err);
		m = mime_parse(msg, sizeof(msg) - 1, NULL, NULL);
		ok(r && rules_eval(r, m, msg, sizeof(msg) - 1, &h) == 0, "TLD eval");
		ok(!hit(&h, "T_SERVER", NULL), "text URI without a known TLD dropped");
		ok(hit(&h, "T_COM", NULL), "text URI under .com kept");
		ok(hit(&h, "T_IP", NULL), "text URI with an IP kept");
		ok(hit(&h, "T_HREF", NULL), "href kept whatever its host");
		rules_hits_free(&h);
		mime_free(&m);
		rules_free(&r);
		rules_report_free(&rep);
		unlink(path);
		free(path);
	}

	/* :addr keeps only what parses as an address (Util.pm) */
	{
		static const char msg[] = "From: Bon d'achat, <news@ml.example>\n"
		    "To: x (c) <a@b@c.example>\nCc: <u@c>A.d.example>\nSubject: s\n\nb\n";
		path = write_rules("addr.cf",
		    "header A_QUOTE From:addr =~ /'/\nheader A_NEWS From:addr =~ /^news\\@ml\\.example$/\n"
		    "header A_TO To:addr =~ /^a\\@b$/\nheader A_CC Cc:addr =~ /\\@/\n"
		    "header A_PHRASE From:name =~ /^Bon d'achat$/m\n");
		r = rules_load((const char *const *)&path, 1, &rep, &err);
		m = mime_parse(msg, sizeof(msg) - 1, NULL, NULL);
		ok(r && rules_eval(r, m, msg, sizeof(msg) - 1, &h) == 0, "addr eval");
		ok(!hit(&h, "A_QUOTE", NULL) && hit(&h, "A_NEWS", NULL),
		    ":addr: a phrase before a comma is not an address");
		ok(hit(&h, "A_TO", NULL), ":addr: cut at a second @");
		ok(!hit(&h, "A_CC", NULL), ":addr: <...> runs to the last >, then is no address");
		ok(hit(&h, "A_PHRASE", NULL), ":name: a lone phrase is a name");
		rules_hits_free(&h);
		mime_free(&m);
		rules_free(&r);
		rules_report_free(&rep);
		unlink(path);
		free(path);
	}

	/* Util.pm uri_list_canonicalize() */
	ok(has_variant("http://Ex.test:80/a", "http://Ex.test:80/a") &&
	    has_variant("http://Ex.test:80/a", "http://Ex.test/a"), "uri: :80 dropped as a variant");
	ok(has_variant("http://3232235777/x", "http://192.168.1.1/x"), "uri: decimal host");
	ok(has_variant("http://0xc0.0250.1.1/", "http://192.168.1.1/"), "uri: hex/octal octets");
	ok(has_variant("http://r.test/go?u=http://evil.test/p&x=1", "http://evil.test/p"),
	    "uri: URL inside a redirector");
	ok(has_variant("http:\\\\ex.test\\a", "http://ex.test/a"), "uri: backslashes, scheme slashes");
	ok(has_variant("http://ex.test?q", "http://ex.test/?q"), "uri: / before ?");
	ok(has_variant("http://ex.test/&#x41;&#66;", "http://ex.test/AB"), "uri: &#NN; decoded");
	ok(has_variant("http://ex.test/%41%2e%a0", "http://ex.test/A.%a0"),
	    "uri: printable %%-escapes decoded, 8-bit kept");
	ok(has_variant("http://foo/", "http://www.foo.com/"), "uri: single label as www.NAME.com");
	ok(has_variant("mailto:a@b.test?subject=x", "mailto:a@b.test"), "uri: mailto query dropped");
	{
		struct buf b = BUF_INIT;
		rules_uri_variants("#top", 4, collect, &b);
		rules_uri_variants("/rel", 4, collect, &b);
		ok(b.len == 0, "uri: fragments and relative paths skipped");
		buf_free(&b);
	}

	/* hostile URIs: random bytes from a URI alphabet, variants bounded */
	{
		static const char al[] = "hHtTpPsS:/\\%0123456789aAfFxX.@?#&;=-_~ \r\n\x80\xff";
		unsigned seed = 12345;
		size_t maxlen = 0, nvar = 0;
		bool bounded = true;
		for (int it = 0; it < 20000; it++) {
			char u[300];
			size_t ul = (size_t)(it % 290);
			struct buf b = BUF_INIT;
			for (size_t k = 0; k < ul; k++) {
				seed = seed * 1103515245u + 12345u;
				u[k] = al[(seed >> 16) % (sizeof(al) - 1)];
			}
			if (it % 3 == 0 && ul > 7)
				memcpy(u, "http://", 7);
			rules_uri_variants(u, ul, collect, &b);
			for (size_t k = 0; k < b.len; k++)
				if (b.data[k] == '|')
					nvar++;
			if (b.len > maxlen)
				maxlen = b.len;
			/* each variant at most ~3x the input (%xx escapes), a few
			 * dozen of them at worst */
			if (b.len > 64 * (3 * ul + 64))
				bounded = false;
			buf_free(&b);
		}
		ok(bounded && nvar > 20000, "20000 random URIs: %zu variants, longest list %zu bytes",
		    nvar, maxlen);
	}

	/* Message.pm split_into_array_of_short_paragraphs() */
	{
		char big[10000];
		size_t v[3] = { 0, 0, 0 };
		memset(big, 'a', sizeof(big));
		big[3000] = '\n';
		rules_split_paragraphs(big, sizeof(big), count_chunk, v);
		/* 0..3000 (the newline), then 2049-byte cuts, then the rest */
		ok(v[2] == sizeof(big) && v[1] == 3001 && v[0] == 4,
		    "rawbody chunks: %zu chunks, longest %zu, %zu bytes", v[0], v[1], v[2]);
		memset(v, 0, sizeof(v));
		rules_split_paragraphs(big, 2048, count_chunk, v);
		ok(v[0] == 1 && v[1] == 2048, "2048 bytes: one chunk");
	}

	/* a pathological regex hits the match limit and returns quickly */
	{
		char big[4096 + 200];
		uint64_t t0;
		size_t n;

		path = write_rules("p.cf", "body PATHO /^(a|aa)+$/\nbody PATHO2 /(\\w+\\s?)*z$/\n");
		r = rules_load((const char *const *)&path, 1, &rep, &err);
		n = (size_t)snprintf(big, 200, "Subject: x\n\n");
		for (size_t i = 0; i < 1500; i++)
			big[n++] = (i % 41 == 40) ? ' ' : 'a';
		big[n++] = '!';
		big[n++] = '\n';
		big[n] = '\0';
		m = mime_parse(big, n, NULL, NULL);
		t0 = now_ms();
		ok(rules_eval(r, m, big, n, &h) == 0, "pathological eval returns");
		ok(now_ms() - t0 < 5000, "within 5 s (%llu ms)", (unsigned long long)(now_ms() - t0));
		ok(h.limit_hits > 0, "match limit reached (%u)", h.limit_hits);
		ok(h.n == 0, "no hit");
		rules_hits_free(&h);
		mime_free(&m);
		rules_free(&r);
		rules_report_free(&rep);
		unlink(path);
		free(path);
	}

	/* nothing readable: NULL and an error */
	{
		const char *p = "/nonexistent/rules.cf";
		r = rules_load(&p, 1, &rep, &err);
		ok(r == NULL && err != NULL, "missing file: %s", err ? err : "");
		free(err);
		rules_report_free(&rep);
	}
	rmdir(tmpl);
	return t_done();
}
