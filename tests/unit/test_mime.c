/*
 * test_mime.c - filters/mime.c on the messages in tests/corpus/mime/:
 * RFC 2047 headers, nested multipart, base64/QP, charsets, HTML to text,
 * URLs, attachments, broken MIME and nesting over the depth limit.
 */
#include "config.h"
#include "mime.h"
#include "util.h"
#include "t.h"

#include <stdlib.h>
#include <string.h>

static char *
slurp(const char *name, size_t *len)
{
	const char *src = getenv("MOAT_SRCDIR");
	char path[4096];
	FILE *f;
	char *d;
	long n;

	snprintf(path, sizeof(path), "%s/tests/corpus/mime/%s", src ? src : ".", name);
	if ((f = fopen(path, "rb")) == NULL) {
		printf("# cannot open %s\n", path);
		*len = 0;
		return xstrdup("");
	}
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	d = xmalloc((size_t)n + 1);
	*len = fread(d, 1, (size_t)n, f);
	d[*len] = '\0';
	fclose(f);
	return d;
}

static struct mime_msg *
parse_file(const char *name, const struct mime_limits *lim)
{
	size_t len;
	char *d = slurp(name, &len), *err = NULL;
	struct mime_msg *m = mime_parse(d, len, lim, &err);

	free(d);
	free(err);
	return m;
}

static bool
has_url(const struct mime_msg *m, const char *url, const char *host)
{
	for (size_t i = 0; i < mime_url_count(m); i++) {
		const struct mime_url *u = mime_url_at(m, i);
		if (strcmp(u->url, url) == 0 && strcmp(u->host, host) == 0)
			return true;
	}
	for (size_t i = 0; i < mime_url_count(m); i++)
		printf("#   url %s host %s\n", mime_url_at(m, i)->url, mime_url_at(m, i)->host);
	return false;
}

static bool
text_has(const struct mime_msg *m, const char *s)
{
	for (size_t i = 0; i < mime_text_count(m); i++)
		if (strstr(mime_text_at(m, i)->text, s))
			return true;
	for (size_t i = 0; i < mime_text_count(m); i++)
		printf("#   text[%zu] %s: %s\n", i, mime_text_at(m, i)->type, mime_text_at(m, i)->text);
	return false;
}

int
main(void)
{
	struct mime_msg *m;
	char *s, *host;
	size_t len;

	mime_init();

	/* RFC 2047 and 8-bit UTF-8 */
	m = parse_file("rfc2047.eml", NULL);
	is_str(mime_header_get(m, "subject"), "Café crème and Привет world",
	    "RFC 2047 Q (ISO-8859-1) and B (UTF-8) words decoded, folding removed");
	is_str(mime_header_get(m, "From"), "Jürgen Müller <juergen@example.test>",
	    "encoded display name decoded");
	is_int(mime_text_count(m), 1, "one text part");
	ok(text_has(m, "Grüße aus Köln"), "8-bit UTF-8 body kept");
	ok(has_url(m, "http://www.example.com/Path?q=1", "www.example.com"),
	    "URL in text: scheme and host lowercased, path kept");
	ok(has_url(m, "http://www.other.test/", "www.other.test"), "www. URL without scheme, trailing dot trimmed");
	is_int(mime_flags(m), 0, "no flags");
	mime_free(&m);
	ok(m == NULL, "mime_free NULLs the pointer");

	/* nested multipart with QP, base64, HTML, attachment, message/rfc822 */
	m = parse_file("nested.eml", NULL);
	ok(text_has(m, "Café crème, naïve"), "QP ISO-8859-1 part decoded to UTF-8 (soft break joined)");
	ok(text_has(m, "Café & crème €5 ☺"), "base64 HTML part: entities decoded");
	ok(!text_has(m, "hidden") && !text_has(m, "color:red") ? true : false,
	    "script and style dropped");
	ok(has_url(m, "https://login.bank.example/verify?a=1&b=2", "login.bank.example"),
	    "href URL normalised, &amp; decoded");
	is_int(mime_attachment_count(m), 1, "one attachment");
	if (mime_attachment_count(m) == 1) {
		is_str(mime_attachment_at(m, 0)->filename, "report.pdf", "attachment file name");
		is_str(mime_attachment_at(m, 0)->type, "application/pdf", "attachment type");
		is_int(mime_attachment_at(m, 0)->size, 1009, "attachment decoded size");
	}
	ok(text_has(m, "inner body text"), "message/rfc822 part walked");
	ok(mime_max_depth(m) == 2, "depth 2 (got %u)", mime_max_depth(m));
	ok(mime_part_count(m) >= 6, "parts counted (%u)", mime_part_count(m));
	mime_free(&m);

	/* windows-1252 and undeclared 8-bit */
	m = parse_file("win1252.eml", NULL);
	ok(text_has(m, "Price €100, “smart quotes” and café."), "windows-1252 body to UTF-8");
	is_str(mime_header_get(m, "Subject"), "“quoted” €100", "windows-1252 encoded word");
	mime_free(&m);
	m = parse_file("latin1-nocharset.eml", NULL);
	ok(text_has(m, "café naïve"), "undeclared 8-bit read as windows-1252");
	mime_free(&m);
	{
		/* every byte 0x80..0xff of windows-1252 (converted by table, as
		 * iconv's CP1252 does), then one CP1252 leaves undefined (0x81):
		 * iconv refuses the part and each byte maps to U+00xx instead */
		char w[512], *p = w;
		p += sprintf(p, "Content-Type: text/plain; charset=windows-1252\n\n");
		for (int c = 0x80; c <= 0xff; c++)
			if (c != 0x81 && c != 0x8d && c != 0x8f && c != 0x90 && c != 0x9d)
				*p++ = (char)c;
		*p++ = '\n';
		*p = '\0';
		m = mime_parse(w, strlen(w), NULL, NULL);
		ok(mime_text_count(m) == 1 && strncmp(mime_text_at(m, 0)->text,
		    "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ\u00a0¡¢£¤¥¦§¨©ª«¬\u00ad®¯°±²³´µ¶·¸¹º»¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖ×ØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõö÷øùúûüýþÿ",
		    strlen("€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ\u00a0¡¢£¤¥¦§¨©ª«¬\u00ad®¯°±²³´µ¶·¸¹º»¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖ×ØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõö÷øùúûüýþÿ")) == 0,
		    "windows-1252: all 123 defined bytes");
		mime_free(&m);
		m = mime_parse("Content-Type: text/plain; charset=iso-8859-1\n\nna\xefve \x81 caf\xe9\n",
		    strlen("Content-Type: text/plain; charset=iso-8859-1\n\nna\xefve \x81 caf\xe9\n"), NULL, NULL);
		ok(mime_text_count(m) == 1 && text_has(m, "naïve \xc2\x81 café"),
		    "undefined 0x81: byte by byte as Latin-1");
		mime_free(&m);
	}

	/* HTML only */
	m = parse_file("html-only.eml", NULL);
	ok(text_has(m, "Dear customer,"), "&nbsp; as a space");
	ok(text_has(m, "Your account <will> be closed."), "&lt; &gt; decoded");
	ok(!text_has(m, "evil") && !text_has(m, "comment") ? true : false, "SCRIPT and comments dropped");
	ok(has_url(m, "http://phish.example:8080/login", "phish.example"), "href with port: host without port");
	ok(has_url(m, "http://img.example/pixel.gif", "img.example"), "img src collected");
	ok(mime_text_count(m) == 1 && mime_text_at(m, 0)->html, "one HTML part, flagged html");
	mime_free(&m);

	/* broken MIME: never a crash, something sensible */
	m = parse_file("broken.eml", NULL);
	ok(m != NULL, "broken multipart parsed");
	ok(text_has(m, "unknown charset body"), "part with unknown charset still read");
	mime_free(&m);
	m = parse_file("garbage.eml", NULL);
	ok(m != NULL && (mime_flags(m) & MIME_F_BROKEN), "garbage flagged broken (flags %#x)", m ? mime_flags(m) : 0);
	mime_free(&m);
	m = mime_parse("", 0, NULL, NULL);
	ok(m != NULL, "empty message");
	mime_free(&m);

	/* depth limit */
	m = parse_file("deep.eml", NULL);
	ok(mime_flags(m) & MIME_F_DEPTH, "25 levels over the default 20: MIME_F_DEPTH");
	ok(mime_max_depth(m) <= 20, "walk stopped at the limit (%u)", mime_max_depth(m));
	mime_free(&m);
	{
		struct mime_limits lim = MIME_LIMITS_DEFAULT;
		lim.max_depth = 100;
		m = parse_file("deep.eml", &lim);
		ok(!(mime_flags(m) & MIME_F_DEPTH) && text_has(m, "deepest text"), "within a raised limit: text reached");
		mime_free(&m);
		lim = (struct mime_limits)MIME_LIMITS_DEFAULT;
		lim.max_parts = 3;
		m = parse_file("nested.eml", &lim);
		ok(mime_flags(m) & MIME_F_PARTS, "part count limit flagged");
		mime_free(&m);
		lim = (struct mime_limits)MIME_LIMITS_DEFAULT;
		lim.max_decoded = 10;
		m = parse_file("rfc2047.eml", &lim);
		ok(mime_flags(m) & MIME_F_DECODED, "decoded size limit flagged");
		mime_free(&m);
		lim = (struct mime_limits)MIME_LIMITS_DEFAULT;
		lim.max_header = 60;
		m = parse_file("rfc2047.eml", &lim);
		ok((mime_flags(m) & MIME_F_HEADER) && mime_header_count(m) < 4, "header size limit flagged");
		mime_free(&m);
	}

	/* mbox From line skipped */
	{
		const char *mb = "From someone@example.test Mon Jan  1 00:00:00 2024\nSubject: hi\n\nbody\n";
		m = mime_parse(mb, strlen(mb), NULL, NULL);
		is_str(mime_header_get(m, "Subject"), "hi", "mbox From line skipped");
		mime_free(&m);
	}

	/* what SpamAssassin's rules need: the parts' raw bytes, the raw URI
	 * list, the Content-* headers of the message in order */
	{
		static const char sa[] =
		    "From: a@example.test\n"
		    "Content-Type: text/html; charset=iso-8859-1\n"
		    "Content-Transfer-Encoding: quoted-printable\n"
		    "Subject: s\n"
		    "\n"
		    "<p>caf=E9 <a href=3D\" HTTP://Ex.COM/A \">x</a> mail b@c.example.com\n"
		    "<img src=3D\"cid:1\"><span href=3D\"http://no.example/\">y</span> 3d3f/ac90@pot5\n";
		const struct mime_text *t;
		size_t k;
		bool found;

		m = mime_parse(sa, sizeof(sa) - 1, NULL, NULL);
		is_int(mime_header_count(m), 4, "all four top-level headers kept");
		is_str(mime_header_at(m, 1)->name, "Content-Type", "Content-Type in its place");
		is_str(mime_header_get(m, "Content-Transfer-Encoding"), "quoted-printable",
		    "Content-Transfer-Encoding value");
		t = mime_text_count(m) ? mime_text_at(m, 0) : NULL;
		ok(t && t->rawlen > 4 && memcmp(t->raw, "<p>caf\xe9", 7) == 0,
		    "raw: QP decoded, ISO-8859-1 byte kept, HTML not rendered");
		ok(t && strstr(t->text, "caf\xc3\xa9") != NULL, "text: UTF-8 rendering");
		found = false;
		for (k = 0; k < mime_uri_count(m); k++)
			found |= strcmp(mime_uri_at(m, k), "HTTP://Ex.COM/A") == 0;
		ok(found, "raw URI: blanks trimmed, case kept");
		found = false;
		for (k = 0; k < mime_uri_count(m); k++)
			found |= strcmp(mime_uri_at(m, k), "mailto:b@c.example.com") == 0;
		ok(found, "address in text listed as mailto:");
		found = false;
		for (k = 0; k < mime_uri_count(m); k++)
			found |= strcmp(mime_uri_at(m, k), "http://3d3f/ac90@pot5") == 0;
		ok(found, "\"x/y@z\" in text listed as http://");
		found = false;
		for (k = 0; k < mime_uri_count(m); k++)
			found |= strstr(mime_uri_at(m, k), "no.example") != NULL;
		ok(!found, "href of <span> is not a URI for the rules");
		mime_free(&m);
	}
	{
		/* HTML.pm target_uri(): relative links resolved against <base>,
		 * dot segments removed, the base's file name dropped */
		static const char bh[] = "Content-Type: text/html\n\n"
		    "<base href=\"http://192.0.2.5/dir/index.html\">"
		    "<a href=\"cgi-bin/click?id=1\">a</a><a href=\"/x/../y/./z\">b</a>"
		    "<a href=\"//other.example/p\">c</a><img src=\"http://h.example/a/b/../c\">\n";
		const char *want[] = { "http://192.0.2.5/dir/index.html",
		    "http://192.0.2.5/dir/cgi-bin/click?id=1", "http://192.0.2.5/y/z",
		    "http://other.example/p", "http://h.example/a/c" };
		m = mime_parse(bh, sizeof(bh) - 1, NULL, NULL);
		for (size_t w = 0; w < sizeof(want) / sizeof(want[0]); w++) {
			bool f = false;
			for (size_t k = 0; k < mime_uri_count(m); k++)
				f |= strcmp(mime_uri_at(m, k), want[w]) == 0;
			ok(f, "base href: %s", want[w]);
		}
		mime_free(&m);
	}
	{
		static const char fo[] = "Content-Type: text/plain;\n\tformat=flowed;\n"
		    "   charset=\"x\"\nSubject: s\n\nb\n";
		m = mime_parse(fo, sizeof(fo) - 1, NULL, NULL);
		is_str(mime_header_get(m, "Content-Type"), "text/plain; format=flowed; charset=\"x\"",
		    "folded header: each fold one space (Node.pm)");
		mime_free(&m);
	}
	{
		const char *h = "a<p>b<br>c<td>d</h1>e<hr><div>f";
		s = mime_html_to_text(h, strlen(h), &len, NULL, NULL);
		is_str(s, "a\n\nb\nc d e\n\nf", "HTML whitespace as HTML.pm: p/hr paragraph, br/div newline, td/hN space");
		free(s);
	}

	/* helpers */
	{
		const char *h = "a<b>b</b>&amp;<br/>c &#x41;&#66; &bogus; 1 < 2";
		s = mime_html_to_text(h, strlen(h), &len, NULL, NULL);
	}
	is_str(s, "ab&\nc AB &bogus; 1 < 2", "html_to_text");
	free(s);
	s = mime_url_normalise("HTTP://user:pw@Host.EXAMPLE.:8080/x", 35, &host);
	is_str(s, "http://host.example:8080/x", "userinfo dropped, trailing dot of host dropped");
	is_str(host, "host.example", "host");
	free(s);
	free(host);
	s = mime_url_normalise("http://", 7, &host);
	ok(s == NULL && host == NULL, "no host: not a URL");
	s = mime_url_normalise("http://bad host/", 16, &host);
	ok(s == NULL, "space in host: not a URL");
	return t_done();
}
