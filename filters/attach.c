/*
 * attach.c - attachment policy: what the names and the bytes of the
 * attachments say, judged against configurable extension lists.
 *
 * For each attachment of the parsed message (filters/mime.h):
 *   name     the base name (after the last '/' or '\'), trailing dots and
 *            spaces dropped as Windows does; its last extension in the
 *            block list -> ext_action, in the quarantine list (macro
 *            documents) -> quarantine; a blocked extension behind another
 *            short one ("invoice.pdf.exe", "a.doc     .scr") -> double
 *            extension; bidirectional overrides (U+202A..202E, U+2066..2069)
 *            that disguise the extension -> rtlo_action.
 *   content  magic bytes, whatever the name and the declared type say: PE
 *            (MZ + "PE\0\0" at e_lfanew, or MZ with binary header bytes),
 *            ELF, Mach-O (thin and fat), Java class, Windows shortcut,
 *            "#!/" scripts -> exec_action.
 *   archive  ZIP (central directory; local headers when it is missing) and
 *            RAR 4/5 (file headers): each member name is judged as above
 *            -> archive_action; encrypted members -> encrypted_action.
 *            Nested archives are not opened (libclamav unpacks those).
 *
 * Runs in: pool threads (pure function over the parsed message).  Untrusted
 * input: names and bytes of attachments; every read is checked against the
 * data length, archive walks stop after max_archive_entries, and names are
 * cut to ATTACH_NAME_MAX.
 */
#include "config.h"
#include "attach.h"
#include "mime.h"
#include "util.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define ATTACH_EXT_MAX  16              /* bytes of an extension we compare */

struct ctx {
	const struct attach_conf *c;
	struct attach_result     *res;
	const char               *filename;     /* of the attachment */
	const char               *member;       /* in an archive, or NULL */
};

static const struct attach_conf attach_defaults = ATTACH_CONF_DEFAULT;

const char *
attach_reason_name(enum attach_reason r)
{
	switch (r) {
	case ATTACH_R_EXTENSION:      return "extension";
	case ATTACH_R_DOUBLE_EXT:     return "double-extension";
	case ATTACH_R_RTLO:           return "bidi-override";
	case ATTACH_R_EXECUTABLE:     return "executable";
	case ATTACH_R_ARCHIVE_MEMBER: return "archive-member";
	case ATTACH_R_ENCRYPTED:      return "encrypted-archive";
	}
	return "?";
}

const char *
attach_action_name(enum attach_action a)
{
	switch (a) {
	case ATTACH_ACCEPT:     return "accept";
	case ATTACH_QUARANTINE: return "quarantine";
	case ATTACH_REJECT:     return "reject";
	}
	return "?";
}

/* copy at most size-1 bytes of s[0..len) without cutting a UTF-8 sequence,
 * control bytes replaced by '?' */
static void
copy_name(char *dst, size_t size, const char *s, size_t len)
{
	size_t n = len < size - 1 ? len : size - 1;

	if (n < len)
		while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
	for (size_t i = 0; i < n; i++)
		dst[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	dst[n] = '\0';
}

static void
add_finding(struct ctx *x, enum attach_reason reason, enum attach_action action,
    const char *detail, size_t dlen)
{
	struct attach_result *r = x->res;
	struct attach_finding *f;

	if (action > r->action)
		r->action = action;
	if (r->nfindings == ATTACH_MAX_FINDINGS) {
		r->truncated = true;
		return;
	}
	f = &r->f[r->nfindings++];
	copy_name(f->filename, sizeof(f->filename), x->filename, strlen(x->filename));
	if (x->member)
		copy_name(f->member, sizeof(f->member), x->member, strlen(x->member));
	else
		f->member[0] = '\0';
	f->reason = reason;
	f->action = action;
	copy_name(f->detail, sizeof(f->detail), detail, dlen);
}

/* is the word w[0..wl) (lowercase) in the space/comma separated list? */
static bool
in_list(const char *list, const char *w, size_t wl)
{
	const char *p = list;

	if (wl == 0)
		return false;
	while (*p) {
		size_t tl;

		while (*p == ' ' || *p == ',' || *p == '\t' || *p == '.')
			p++;
		tl = strcspn(p, " ,\t");
		if (tl == wl && ascii_strncasecmp(p, w, wl) == 0)
			return true;
		p += tl;
	}
	return false;
}

/* a short alphanumeric extension, as a decoy before the real one */
static bool
plausible_ext(const char *s, size_t len)
{
	if (len == 0 || len > 5)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')))
			return false;
	}
	return true;
}

/* U+202A..U+202E, U+2066..U+2069 */
static bool
has_bidi(const char *s, size_t len)
{
	for (size_t i = 0; i + 2 < len; i++) {
		const unsigned char *u = (const unsigned char *)s + i;
		if (u[0] == 0xe2 && ((u[1] == 0x80 && u[2] >= 0xaa && u[2] <= 0xae) ||
		    (u[1] == 0x81 && u[2] >= 0xa6 && u[2] <= 0xa9)))
			return true;
	}
	return false;
}

/* judge one name (of an attachment or of an archive member) */
static void
check_name(struct ctx *x, const char *name, size_t len, bool in_archive)
{
	const struct attach_conf *c = x->c;
	const char *block = c->block_ext ? c->block_ext : ATTACH_DEFAULT_BLOCK;
	const char *quar = c->quarantine_ext ? c->quarantine_ext : ATTACH_DEFAULT_QUARANTINE;
	const char *base = name, *dot, *ext;
	size_t blen, elen;
	enum attach_action a;

	for (size_t i = 0; i < len; i++)
		if (name[i] == '/' || name[i] == '\\')
			base = name + i + 1;
	blen = len - (size_t)(base - name);
	while (blen > 0 && (base[blen - 1] == '.' || base[blen - 1] == ' ' || base[blen - 1] == '\0'))
		blen--;
	if (blen == 0)
		return;
	if (has_bidi(base, blen))
		add_finding(x, in_archive ? ATTACH_R_ARCHIVE_MEMBER : ATTACH_R_RTLO,
		    in_archive ? c->archive_action : c->rtlo_action, "bidi-override", 13);
	for (dot = NULL, ext = base; ext < base + blen; ext++)
		if (*ext == '.')
			dot = ext;
	if (dot == NULL || dot == base)
		return;                 /* no extension, or a dot file */
	ext = dot + 1;
	elen = (size_t)(base + blen - ext);
	if (elen == 0 || elen > ATTACH_EXT_MAX)
		return;
	if (in_list(block, ext, elen)) {
		/* the extension before it, spaces trimmed: "x.pdf   .exe" */
		const char *e2 = dot, *p;
		while (e2 > base && e2[-1] == ' ')
			e2--;
		for (p = e2; p > base && p[-1] != '.'; p--)
			;
		if (p > base + 1 && plausible_ext(p, (size_t)(e2 - p)) && !in_list(block, p, (size_t)(e2 - p))) {
			char d[32];
			int n = snprintf(d, sizeof(d), "%.*s.%.*s", (int)(e2 - p), p, (int)elen, ext);
			a = in_archive ? c->archive_action : c->double_ext_action;
			add_finding(x, in_archive ? ATTACH_R_ARCHIVE_MEMBER : ATTACH_R_DOUBLE_EXT, a,
			    d, n < 0 ? 0 : (size_t)n < sizeof(d) ? (size_t)n : sizeof(d) - 1);
			return;
		}
		a = in_archive ? c->archive_action : c->ext_action;
		add_finding(x, in_archive ? ATTACH_R_ARCHIVE_MEMBER : ATTACH_R_EXTENSION, a, ext, elen);
	} else if (in_list(quar, ext, elen)) {
		a = in_archive && c->archive_action < ATTACH_QUARANTINE ? c->archive_action : ATTACH_QUARANTINE;
		add_finding(x, in_archive ? ATTACH_R_ARCHIVE_MEMBER : ATTACH_R_EXTENSION, a, ext, elen);
	}
}

/* ---- magic ---- */

static uint32_t
le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t
le16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

const char *
attach_magic(const unsigned char *d, size_t len)
{
	static const unsigned char lnk[20] = { 0x4c, 0, 0, 0, 0x01, 0x14, 0x02, 0, 0, 0, 0, 0,
	    0xc0, 0, 0, 0, 0, 0, 0, 0x46 };

	if (d == NULL || len < 4)
		return NULL;
	if (d[0] == 'M' && d[1] == 'Z' && len >= 64) {
		uint32_t pe = le32(d + 0x3c);
		if ((size_t)pe + 4 <= len && memcmp(d + pe, "PE\0\0", 4) == 0)
			return "PE";
		for (size_t i = 2; i < 64; i++)
			if (d[i] < 0x09)
				return "MZ";    /* a DOS header, not text that starts with MZ */
		return NULL;
	}
	if (memcmp(d, "\x7f" "ELF", 4) == 0)
		return "ELF";
	switch (be32(d)) {
	case 0xfeedfaceu: case 0xfeedfacfu: case 0xcefaedfeu: case 0xcffaedfeu:
		return "Mach-O";
	case 0xcafebabeu:
		if (len >= 8 && be32(d + 4) >= 1 && be32(d + 4) <= 30)
			return "Mach-O";        /* fat binary: nfat_arch */
		return len >= 8 ? "Java" : NULL;
	}
	if (len >= sizeof(lnk) && memcmp(d, lnk, sizeof(lnk)) == 0)
		return "LNK";
	if (d[0] == '#' && d[1] == '!') {
		size_t i = 2;
		while (i < len && i < 16 && d[i] == ' ')
			i++;
		if (i < len && d[i] == '/')
			return "script";
	}
	return NULL;
}

/* ---- archives ---- */

static int
zip_central(const unsigned char *d, size_t len, unsigned max,
    void (*cb)(void *, const char *, size_t), void *arg, bool *enc)
{
	size_t eocd, stop, cd, cdsize, p;
	unsigned n = 0, total;

	if (len < 22)
		return -1;
	stop = len - 22 > 65535 ? len - 22 - 65535 : 0;
	for (eocd = len - 22;; eocd--) {
		if (memcmp(d + eocd, "PK\5\6", 4) == 0)
			break;
		if (eocd == stop)
			return -1;
	}
	total = le16(d + eocd + 10);
	cdsize = le32(d + eocd + 12);
	if (cdsize > eocd)
		return -1;
	cd = eocd - cdsize;             /* also right with data prepended (SFX) */
	for (p = cd; n < total && n < max && p + 46 <= eocd; n++) {
		size_t nl, el, cl;

		if (memcmp(d + p, "PK\1\2", 4) != 0)
			break;
		nl = le16(d + p + 28);
		el = le16(d + p + 30);
		cl = le16(d + p + 32);
		if (p + 46 + nl > eocd)
			break;
		if (le16(d + p + 8) & 0x1)
			*enc = true;
		cb(arg, (const char *)d + p + 46, nl);
		p += 46 + nl + el + cl;
	}
	return (int)n;
}

/* no central directory (cut or damaged): the local headers we can find */
static int
zip_local(const unsigned char *d, size_t len, unsigned max,
    void (*cb)(void *, const char *, size_t), void *arg, bool *enc)
{
	const unsigned char *p = d, *end = d + len;
	unsigned n = 0;

	while (n < max && (size_t)(end - p) >= 30) {
		const unsigned char *h = memmem(p, (size_t)(end - p), "PK\3\4", 4);
		size_t nl;

		if (h == NULL || (size_t)(end - h) < 30)
			break;
		nl = le16(h + 26);
		if (nl > 0 && (size_t)(end - h) >= 30 + nl) {
			if (le16(h + 6) & 0x1)
				*enc = true;
			cb(arg, (const char *)h + 30, nl);
			n++;
		}
		p = h + 4;
	}
	return (int)n;
}

static int
rar4(const unsigned char *d, size_t len, unsigned max,
    void (*cb)(void *, const char *, size_t), void *arg, bool *enc)
{
	size_t p = 7;
	unsigned n = 0, blocks = 0;

	while (p + 7 <= len && n < max && blocks++ < max * 2 + 16) {
		unsigned type = d[p + 2], flags = le16(d + p + 3);
		size_t hs = le16(d + p + 5), add = 0;

		if (hs < 7)
			break;
		if (type == 0x73 && (flags & 0x80)) {
			*enc = true;            /* headers encrypted: no names */
			break;
		}
		if (type == 0x7b)
			break;
		if ((type == 0x74 || (flags & 0x8000)) && p + 11 <= len)
			add = le32(d + p + 7);
		if (type == 0x74 && p + 32 <= len) {
			size_t nl = le16(d + p + 26), no = p + 32 + ((flags & 0x100) ? 8 : 0);
			if (no + nl <= len && no + nl <= p + hs) {
				const unsigned char *z = memchr(d + no, '\0', nl);
				if (flags & 0x04)
					*enc = true;
				/* unicode names: the ASCII part comes first, NUL-ended */
				cb(arg, (const char *)d + no, z ? (size_t)(z - (d + no)) : nl);
				n++;
			}
		}
		if (hs + add > len - p)
			break;
		p += hs + add;
	}
	return (int)n;
}

static bool
vint(const unsigned char *d, size_t len, size_t *p, uint64_t *v)
{
	*v = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (*p >= len)
			return false;
		*v |= (uint64_t)(d[*p] & 0x7f) << shift;
		if ((d[(*p)++] & 0x80) == 0)
			return true;
	}
	return false;
}

static int
rar5(const unsigned char *d, size_t len, unsigned max,
    void (*cb)(void *, const char *, size_t), void *arg, bool *enc)
{
	size_t p = 8;
	unsigned n = 0, blocks = 0;

	while (p + 4 < len && n < max && blocks++ < max * 2 + 16) {
		uint64_t hs, type, flags, extra = 0, data = 0, ff, v, nl;
		size_t q = p + 4, hstart;

		if (!vint(d, len, &q, &hs) || hs == 0 || hs > len - q)
			break;
		hstart = q;
		if (!vint(d, len, &q, &type) || !vint(d, len, &q, &flags))
			break;
		if ((flags & 1) && !vint(d, len, &q, &extra))
			break;
		if ((flags & 2) && !vint(d, len, &q, &data))
			break;
		if (type == 4) {
			*enc = true;            /* archive encryption header */
			break;
		}
		if (type == 5)
			break;
		if (type == 2) {
			if (!vint(d, len, &q, &ff) || !vint(d, len, &q, &v) || !vint(d, len, &q, &v))
				break;
			if (ff & 2)
				q += 4;
			if (ff & 4)
				q += 4;
			if (!vint(d, len, &q, &v) || !vint(d, len, &q, &v) || !vint(d, len, &q, &nl))
				break;
			if (nl > len || q + nl > hstart + hs)
				break;
			cb(arg, (const char *)d + q, (size_t)nl);
			n++;
		}
		if (data > len || hstart + hs + data > len)
			break;
		p = hstart + (size_t)hs + (size_t)data;
	}
	return (int)n;
}

int
attach_archive_names(const unsigned char *d, size_t len, unsigned max,
    void (*cb)(void *, const char *, size_t), void *arg, bool *enc)
{
	int n;

	*enc = false;
	if (d == NULL || len < 8)
		return -1;
	if (memcmp(d, "PK\3\4", 4) == 0 || memcmp(d, "PK\5\6", 4) == 0) {
		if ((n = zip_central(d, len, max, cb, arg, enc)) >= 0)
			return n;
		return zip_local(d, len, max, cb, arg, enc);
	}
	if (memcmp(d, "Rar!\x1a\x07\x01\x00", 8) == 0)
		return rar5(d, len, max, cb, arg, enc);
	if (memcmp(d, "Rar!\x1a\x07\x00", 7) == 0)
		return rar4(d, len, max, cb, arg, enc);
	/* a self-extracting ZIP (an executable stub first) is found by its end record */
	if (d[0] == 'M' && d[1] == 'Z')
		return zip_central(d, len, max, cb, arg, enc);
	return -1;
}

static void
member_cb(void *arg, const char *name, size_t len)
{
	struct ctx *x = arg;
	char buf[ATTACH_NAME_MAX];

	copy_name(buf, sizeof(buf), name, len);
	x->member = buf;
	check_name(x, name, len, true);
	x->member = NULL;
}

enum attach_action
attach_check(const struct attach_conf *c, const struct mime_msg *m, struct attach_result *res)
{
	struct ctx x = { .c = c ? c : &attach_defaults, .res = res };
	size_t i, n = mime_attachment_count(m);

	memset(res, 0, sizeof(*res));
	res->action = ATTACH_ACCEPT;
	for (i = 0; i < n; i++) {
		const struct mime_attachment *a = mime_attachment_at(m, i);
		const char *magic;

		x.filename = a->filename ? a->filename : "";
		x.member = NULL;
		check_name(&x, x.filename, strlen(x.filename), false);
		if (a->data == NULL)
			continue;
		if ((magic = attach_magic(a->data, a->size)) != NULL)
			add_finding(&x, ATTACH_R_EXECUTABLE, x.c->exec_action, magic, strlen(magic));
		if (x.c->check_archives) {
			bool enc = false;
			if (attach_archive_names(a->data, a->size, x.c->max_archive_entries,
			    member_cb, &x, &enc) >= 0 && enc)
				add_finding(&x, ATTACH_R_ENCRYPTED, x.c->encrypted_action, "encrypted", 9);
		}
	}
	return res->action;
}
