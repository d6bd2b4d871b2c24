/*
 * test_attach.c - filters/attach.c: each policy case on small messages built
 * here (one base64 attachment each): blocked and macro extensions, double
 * extensions, trailing dots, bidi overrides, executable magic under harmless
 * names (PE, ELF, Mach-O, script), text that merely starts with "MZ", ZIP
 * members (central directory, cut archives, encrypted, paths), RAR 4 and 5
 * members, configurable lists, the findings cap, attachments over the MIME
 * limit, the shared samples eicar.zip/clam.zip when present, and random
 * bytes behind archive signatures (no crash, bounded).
 */
#include "config.h"
#include "attach.h"
#include "mime.h"
#include "buf.h"
#include "util.h"
#include "t.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void
b64(struct buf *b, const unsigned char *d, size_t len)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i, col = 0;

	for (i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < len ? (uint32_t)d[i + 1] << 8 : 0) |
		    (i + 2 < len ? d[i + 2] : 0);
		char o[4] = { tab[v >> 18 & 63], tab[v >> 12 & 63],
		    i + 1 < len ? tab[v >> 6 & 63] : '=', i + 2 < len ? tab[v & 63] : '=' };
		buf_add(b, o, 4);
		if ((col += 4) >= 76) {
			buf_add(b, "\r\n", 2);
			col = 0;
		}
	}
	buf_add(b, "\r\n", 2);
}

/* a message with one attachment; name in UTF-8 (RFC 2231 when not ASCII) */
static struct mime_msg *
msg_with(const char *name, const char *type, const void *data, size_t len,
    const struct mime_limits *lim)
{
	struct buf b = BUF_INIT;
	struct mime_msg *m;
	bool ascii = true;

	for (const char *p = name; *p; p++)
		if ((unsigned char)*p >= 0x80)
			ascii = false;
	buf_printf(&b, "From: a@example.org\r\nTo: b@example.net\r\nSubject: t\r\n"
	    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
	    "--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
	    "--XX\r\nContent-Type: %s\r\nContent-Transfer-Encoding: base64\r\n", type);
	if (ascii)
		buf_printf(&b, "Content-Disposition: attachment; filename=\"%s\"\r\n\r\n", name);
	else {
		buf_printf(&b, "Content-Disposition: attachment; filename*=UTF-8''");
		for (const unsigned char *p = (const unsigned char *)name; *p; p++)
			buf_printf(&b, "%%%02X", *p);
		buf_printf(&b, "\r\n\r\n");
	}
	b64(&b, data, len);
	buf_printf(&b, "--XX--\r\n");
	m = mime_parse(b.data, b.len, lim, NULL);
	buf_free(&b);
	return m;
}

static struct attach_result res;

static enum attach_action
check(const struct attach_conf *c, const char *name, const char *type, const void *d, size_t len)
{
	struct mime_msg *m = msg_with(name, type, d, len, NULL);
	enum attach_action a = attach_check(c, m, &res);
	mime_free(&m);
	return a;
}

static bool
has(enum attach_reason r, const char *detail, const char *member)
{
	for (size_t i = 0; i < res.nfindings; i++)
		if (res.f[i].reason == r && (!detail || strcmp(res.f[i].detail, detail) == 0) &&
		    (!member || strcmp(res.f[i].member, member) == 0))
			return true;
	return false;
}

static void
show(void)
{
	for (size_t i = 0; i < res.nfindings; i++)
		printf("#   %s [%s] %s %s -> %s\n", res.f[i].filename, res.f[i].member,
		    attach_reason_name(res.f[i].reason), res.f[i].detail,
		    attach_action_name(res.f[i].action));
}

/* ---- archive builders ---- */

static void
put16(struct buf *b, unsigned v)
{
	unsigned char c[2] = { (unsigned char)v, (unsigned char)(v >> 8) };
	buf_add(b, c, 2);
}

static void
put32(struct buf *b, uint32_t v)
{
	unsigned char c[4] = { (unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
	    (unsigned char)(v >> 24) };
	buf_add(b, c, 4);
}

/* a stored ZIP of the given names (content "x"); flags per entry */
static void
make_zip(struct buf *b, const char *const *names, size_t n, unsigned flags, bool central)
{
	uint32_t off[16];
	size_t cd;

	for (size_t i = 0; i < n; i++) {
		off[i] = (uint32_t)b->len;
		buf_add(b, "PK\3\4", 4);
		put16(b, 20); put16(b, flags); put16(b, 0); put16(b, 0); put16(b, 0);
		put32(b, 0x8cdc1683u); put32(b, 1); put32(b, 1);
		put16(b, (unsigned)strlen(names[i])); put16(b, 0);
		buf_add(b, names[i], strlen(names[i]));
		buf_add(b, "x", 1);
	}
	if (!central)
		return;
	cd = b->len;
	for (size_t i = 0; i < n; i++) {
		buf_add(b, "PK\1\2", 4);
		put16(b, 20); put16(b, 20); put16(b, flags); put16(b, 0); put16(b, 0); put16(b, 0);
		put32(b, 0x8cdc1683u); put32(b, 1); put32(b, 1);
		put16(b, (unsigned)strlen(names[i])); put16(b, 0); put16(b, 0);
		put16(b, 0); put16(b, 0); put32(b, 0); put32(b, off[i]);
		buf_add(b, names[i], strlen(names[i]));
	}
	buf_add(b, "PK\5\6", 4);
	put16(b, 0); put16(b, 0); put16(b, (unsigned)n); put16(b, (unsigned)n);
	put32(b, (uint32_t)(b->len - cd - 12)); put32(b, (uint32_t)cd); put16(b, 0);
}

static void
make_rar4(struct buf *b, const char *name)
{
	buf_add(b, "Rar!\x1a\x07\x00", 7);
	/* archive header: crc, type 0x73, flags, size 13, reserved 6 */
	put16(b, 0); buf_add(b, "\x73", 1); put16(b, 0); put16(b, 13); put16(b, 0); put32(b, 0);
	/* file header */
	put16(b, 0); buf_add(b, "\x74", 1); put16(b, 0x8000); put16(b, (unsigned)(32 + strlen(name)));
	put32(b, 1); put32(b, 1); buf_add(b, "\x02", 1); put32(b, 0); put32(b, 0);
	buf_add(b, "\x14\x30", 2); put16(b, (unsigned)strlen(name)); put32(b, 0x20);
	buf_add(b, name, strlen(name));
	buf_add(b, "x", 1);
	put16(b, 0); buf_add(b, "\x7b", 1); put16(b, 0x4000); put16(b, 7);
}

static void
make_rar5(struct buf *b, const char *name)
{
	unsigned char h[128];
	size_t n = 0, nl = strlen(name);

	buf_add(b, "Rar!\x1a\x07\x01\x00", 8);
	/* main header: crc, size 3, type 1, flags 0, archive flags 0 */
	put32(b, 0); buf_add(b, "\x03\x01\x00\x00", 4);
	/* file header: type 2, flags 2 (data area), data size 1, file flags 0,
	 * unpacked 1, attributes 0x20, compression 0, host 0, name length */
	h[n++] = 2; h[n++] = 2; h[n++] = 1; h[n++] = 0; h[n++] = 1; h[n++] = 0x20;
	h[n++] = 0; h[n++] = 0; h[n++] = (unsigned char)nl;
	memcpy(h + n, name, nl);
	n += nl;
	put32(b, 0);
	buf_addc(b, (char)n);
	buf_add(b, h, n);
	buf_add(b, "x", 1);
	put32(b, 0); buf_add(b, "\x03\x05\x00\x00", 4);
}

static unsigned char *
slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	unsigned char *d;
	long n;

	*len = 0;
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	d = xmalloc((size_t)n + 1);
	if (fread(d, 1, (size_t)n, f) != (size_t)n)
		n = 0;
	fclose(f);
	*len = (size_t)n;
	return d;
}

static void
noop_cb(void *arg, const char *name, size_t len)
{
	(*(size_t *)arg) += len;
}

int
main(void)
{
	static const char pdf[] = "%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n";
	unsigned char pe[256], elf[64], macho[64];
	struct attach_conf c = ATTACH_CONF_DEFAULT;
	struct buf z = BUF_INIT;
	const char *src = getenv("MOAT_SRCDIR");
	enum attach_action a;

	mime_init();

	memset(pe, 0, sizeof(pe));
	pe[0] = 'M'; pe[1] = 'Z'; pe[0x3c] = 0x80;
	memcpy(pe + 0x80, "PE\0\0", 4);
	memset(elf, 0, sizeof(elf));
	memcpy(elf, "\x7f" "ELF\x02\x01\x01", 7);
	memset(macho, 0, sizeof(macho));
	memcpy(macho, "\xcf\xfa\xed\xfe\x07\x00\x00\x01", 8);

	a = check(NULL, "report.pdf", "application/pdf", pdf, sizeof(pdf) - 1);
	ok(a == ATTACH_ACCEPT && res.nfindings == 0, "a PDF is accepted");
	a = check(NULL, "setup.exe", "application/octet-stream", pdf, 10);
	ok(a == ATTACH_REJECT && has(ATTACH_R_EXTENSION, "exe", ""), "setup.exe: rejected by extension");
	a = check(NULL, "Invoice.PDF.Exe", "application/pdf", pdf, 10);
	ok(a == ATTACH_REJECT && has(ATTACH_R_DOUBLE_EXT, "PDF.Exe", NULL), "Invoice.PDF.Exe: double extension");
	show();
	a = check(NULL, "report.doc        .scr", "application/msword", pdf, 10);
	ok(a == ATTACH_REJECT && has(ATTACH_R_DOUBLE_EXT, "doc.scr", NULL), "spaces before the real extension");
	a = check(NULL, "virus.exe. .", "application/octet-stream", pdf, 10);
	ok(a == ATTACH_REJECT && has(ATTACH_R_EXTENSION, "exe", NULL), "trailing dots and spaces dropped");
	a = check(NULL, "C:\\Users\\x\\run.bat", "application/octet-stream", pdf, 10);
	ok(a == ATTACH_REJECT && has(ATTACH_R_EXTENSION, "bat", NULL), "a path in the name: base name judged");
	for (const char *const *e = (const char *const[]){ "a.scr", "a.js", "a.vbs", "a.hta", "a.jar",
	    "a.msi", "a.lnk", "a.iso", "a.img", "a.ps1", "a.wsf", "a.cmd", "a.com", "a.pif", NULL }; *e; e++) {
		a = check(NULL, *e, "application/octet-stream", pdf, 10);
		ok(a == ATTACH_REJECT, "%s rejected", *e);
	}
	a = check(NULL, "budget.xlsm", "application/vnd.ms-excel.sheet.macroEnabled.12", pdf, 10);
	ok(a == ATTACH_QUARANTINE && has(ATTACH_R_EXTENSION, "xlsm", NULL), "budget.xlsm: quarantined (macros)");
	a = check(NULL, "letter.docm", "application/octet-stream", pdf, 10);
	is_int(a, ATTACH_QUARANTINE, "letter.docm quarantined");
	a = check(NULL, "archive.tar.gz", "application/gzip", pdf, 10);
	is_int(a, ATTACH_ACCEPT, "archive.tar.gz: a harmless double extension");
	a = check(NULL, "photo\xe2\x80\xaegpj.txt", "text/plain", "hello", 5);
	ok(a == ATTACH_REJECT && has(ATTACH_R_RTLO, NULL, NULL), "U+202E in the name: rejected");
	show();

	/* content */
	a = check(NULL, "holiday.jpg", "image/jpeg", pe, sizeof(pe));
	ok(a == ATTACH_REJECT && has(ATTACH_R_EXECUTABLE, "PE", NULL), "PE named .jpg: rejected by magic");
	a = check(NULL, "data.bin", "application/octet-stream", elf, sizeof(elf));
	ok(a == ATTACH_REJECT && has(ATTACH_R_EXECUTABLE, "ELF", NULL), "ELF");
	a = check(NULL, "notes", "application/octet-stream", macho, sizeof(macho));
	ok(a == ATTACH_REJECT && has(ATTACH_R_EXECUTABLE, "Mach-O", NULL), "Mach-O");
	a = check(NULL, "readme.txt", "text/plain", "#!/bin/sh\nrm -rf ~\n", 19);
	ok(a == ATTACH_REJECT && has(ATTACH_R_EXECUTABLE, "script", NULL), "shebang script named .txt");
	a = check(NULL, "band.txt", "text/plain",
	    "MZ is a band from the eighties and this text is long enough to have a header.", 78);
	is_int(a, ATTACH_ACCEPT, "text that starts with MZ is not an executable");
	ok(attach_magic((const unsigned char *)"\xca\xfe\xba\xbe\x00\x00\x00\x34", 8) != NULL &&
	    strcmp(attach_magic((const unsigned char *)"\xca\xfe\xba\xbe\x00\x00\x00\x34", 8), "Java") == 0,
	    "CAFEBABE with a class version: Java");
	ok(attach_magic((const unsigned char *)"MZ", 2) == NULL, "2 bytes of MZ: too short to say");

	/* archives */
	{
		const char *names[] = { "docs/readme.txt", "docs/invoice.pdf.exe", "tools/run.js" };
		buf_reset(&z);
		make_zip(&z, names, 3, 0, true);
		a = check(NULL, "docs.zip", "application/zip", z.data, z.len);
		ok(a == ATTACH_REJECT && has(ATTACH_R_ARCHIVE_MEMBER, "pdf.exe", "docs/invoice.pdf.exe") &&
		    has(ATTACH_R_ARCHIVE_MEMBER, "js", "tools/run.js") && res.nfindings == 2,
		    "zip: two blocked members found by the central directory");
		show();
		buf_reset(&z);
		make_zip(&z, names, 3, 0, false);
		a = check(NULL, "cut.zip", "application/zip", z.data, z.len);
		ok(a == ATTACH_REJECT && has(ATTACH_R_ARCHIVE_MEMBER, "js", "tools/run.js"),
		    "zip without central directory: local headers");
		buf_reset(&z);
		make_zip(&z, names, 1, 1, true);
		a = check(NULL, "secret.zip", "application/zip", z.data, z.len);
		ok(a == ATTACH_ACCEPT && has(ATTACH_R_ENCRYPTED, NULL, NULL), "encrypted zip: noted, accepted by default");
		c.encrypted_action = ATTACH_QUARANTINE;
		a = check(&c, "secret.zip", "application/zip", z.data, z.len);
		is_int(a, ATTACH_QUARANTINE, "encrypted zip: quarantined when configured");
		c.encrypted_action = ATTACH_ACCEPT;
		c.check_archives = false;
		buf_reset(&z);
		make_zip(&z, names, 3, 0, true);
		a = check(&c, "docs.zip", "application/zip", z.data, z.len);
		is_int(a, ATTACH_ACCEPT, "archive checks off");
		c.check_archives = true;
		c.archive_action = ATTACH_QUARANTINE;
		a = check(&c, "docs.zip", "application/zip", z.data, z.len);
		is_int(a, ATTACH_QUARANTINE, "archive_action quarantine");
		c.archive_action = ATTACH_REJECT;
	}
	buf_reset(&z);
	make_rar4(&z, "payload.scr");
	a = check(NULL, "x.rar", "application/x-rar", z.data, z.len);
	ok(a == ATTACH_REJECT && has(ATTACH_R_ARCHIVE_MEMBER, "scr", "payload.scr"), "RAR 4 member");
	show();
	buf_reset(&z);
	make_rar5(&z, "dropper.vbs");
	a = check(NULL, "y.rar", "application/vnd.rar", z.data, z.len);
	ok(a == ATTACH_REJECT && has(ATTACH_R_ARCHIVE_MEMBER, "vbs", "dropper.vbs"), "RAR 5 member");
	show();

	/* configurable lists */
	c.block_ext = "foo, bar";
	c.quarantine_ext = "";
	a = check(&c, "x.foo", "application/octet-stream", pdf, 10);
	is_int(a, ATTACH_REJECT, "own block list: x.foo rejected");
	a = check(&c, "x.exe", "application/octet-stream", pdf, 10);
	is_int(a, ATTACH_ACCEPT, "own block list: x.exe no longer listed");
	a = check(&c, "x.docm", "application/octet-stream", pdf, 10);
	is_int(a, ATTACH_ACCEPT, "empty quarantine list");
	c.block_ext = NULL;
	c.quarantine_ext = NULL;
	c.ext_action = ATTACH_QUARANTINE;
	a = check(&c, "x.exe", "application/octet-stream", pdf, 10);
	is_int(a, ATTACH_QUARANTINE, "ext_action quarantine");
	c.ext_action = ATTACH_REJECT;

	/* the findings cap */
	{
		const char *names[16];
		char nb[16][16];
		for (int i = 0; i < 16; i++) {
			snprintf(nb[i], sizeof(nb[i]), "f%d.exe", i);
			names[i] = nb[i];
		}
		buf_reset(&z);
		make_zip(&z, names, 16, 0, true);
		a = check(NULL, "many.exe", "application/zip", z.data, z.len);
		ok(a == ATTACH_REJECT && res.nfindings == ATTACH_MAX_FINDINGS && res.truncated,
		    "17 findings: %zu kept, truncated", res.nfindings);
	}

	/* over the MIME limit: names still judged, no content */
	{
		struct mime_limits lim = MIME_LIMITS_DEFAULT;
		struct mime_msg *m;
		lim.max_decoded = 16;
		m = msg_with("holiday.jpg", "image/jpeg", pe, sizeof(pe), &lim);
		a = attach_check(NULL, m, &res);
		ok(a == ATTACH_ACCEPT && mime_attachment_at(m, 0)->data == NULL,
		    "attachment over max_decoded: content not kept, not judged");
		mime_free(&m);
		m = msg_with("holiday.exe", "image/jpeg", pe, sizeof(pe), &lim);
		is_int(attach_check(NULL, m, &res), ATTACH_REJECT, "... its name still is");
		mime_free(&m);
	}

	/* the shared samples */
	if (src) {
		char path[4096];
		unsigned char *d;
		size_t len;

		snprintf(path, sizeof(path), "%s/../shared/testdata/clamav/samples/eicar.zip", src);
		if ((d = slurp(path, &len)) != NULL) {
			a = check(NULL, "eicar.zip", "application/zip", d, len);
			ok(a == ATTACH_REJECT && has(ATTACH_R_ARCHIVE_MEMBER, "com", "eicar.com"),
			    "shared eicar.zip: eicar.com inside");
			free(d);
		}
		snprintf(path, sizeof(path), "%s/../shared/testdata/clamav/samples/clam.exe", src);
		if ((d = slurp(path, &len)) != NULL) {
			a = check(NULL, "clam.txt", "text/plain", d, len);
			ok(a == ATTACH_REJECT && has(ATTACH_R_EXECUTABLE, "PE", NULL), "shared clam.exe as .txt: PE");
			free(d);
		}
	}

	/* random bytes behind archive signatures: no crash, bounded */
	{
		static const char *sig[] = { "PK\3\4", "PK\5\6", "Rar!\x1a\x07\x00", "Rar!\x1a\x07\x01\x00", "MZ" };
		unsigned char buf[512];
		uint32_t r = 12345;
		size_t total = 0;
		int runs = 0;
		bool enc;

		for (int i = 0; i < 20000; i++) {
			size_t len = 8 + (r % 500), sl;
			const char *s = sig[i % 5];
			for (size_t j = 0; j < len; j++) {
				r = r * 1103515245u + 12345u;
				buf[j] = (unsigned char)(r >> 16);
				if (r % 7 == 0)
					buf[j] = "PK\1\2\5\6\3\4"[r % 8];
			}
			sl = i % 5 == 2 ? 7 : i % 5 == 3 ? 8 : i % 5 == 4 ? 2 : 4;
			memcpy(buf, s, sl);
			if (attach_archive_names(buf, len, 100, noop_cb, &total, &enc) >= 0)
				runs++;
			attach_magic(buf, len);
		}
		ok(1, "20,000 random archives survived (%d parsed, %zu name bytes)", runs, total);
	}

	buf_free(&z);
	return t_done();
}
