/*
 * mime.h - parse a message once into a tree the filters share.
 *
 * mime_parse() turns the raw message into: the top-level headers (unfolded,
 * RFC 2047 decoded to UTF-8), the text parts (transfer encoding decoded,
 * charset converted to UTF-8, HTML rendered to plain text), the attachments
 * (file name, content type, decoded size) and the URLs found in text and in
 * HTML href/src attributes (normalised: scheme and host lowercased).
 *
 * Limits (struct mime_limits) bound MIME depth, part count, decoded bytes and
 * header bytes; what exceeds them is skipped and flagged in mime_flags(),
 * never an error.  The result is immutable and may be read by several
 * threads at once.  mime_init() must run once at startup, before threads.
 */
#ifndef MOAT_MIME_H
#define MOAT_MIME_H

#include <stdbool.h>
#include <stddef.h>

struct mime_limits {
	unsigned max_depth;             /* nesting of multiparts/message parts */
	unsigned max_parts;             /* leaf + container parts visited */
	size_t   max_decoded;           /* total decoded bytes of text parts */
	size_t   max_header;            /* bytes of the top-level header block */
	size_t   max_urls;              /* URLs kept */
};

#define MIME_LIMITS_DEFAULT { 20, 1000, 50u * 1024 * 1024, 1024 * 1024, 1000 }

/* mime_flags() bits: what was cut or odd */
#define MIME_F_DEPTH     0x01u  /* deeper parts skipped */
#define MIME_F_PARTS     0x02u  /* parts beyond max_parts skipped */
#define MIME_F_DECODED   0x04u  /* text beyond max_decoded dropped */
#define MIME_F_HEADER    0x08u  /* header block beyond max_header ignored */
#define MIME_F_URLS      0x10u  /* URLs beyond max_urls dropped */
#define MIME_F_BROKEN    0x20u  /* no header/body structure, bad boundaries */

struct mime_header {
	const char *name;               /* as written */
	const char *value;              /* unfolded, RFC 2047 decoded, UTF-8 */
};

struct mime_text {
	const char *type;               /* "text/plain", "text/html" (lowercase) */
	const char *text;               /* UTF-8, NUL-terminated; HTML as text */
	size_t      len;
	bool        html;
	/* the part's bytes after transfer decoding only: original charset,
	 * HTML not rendered (what SpamAssassin's rawbody rules see);
	 * NUL-terminated, may hold NULs before rawlen */
	const char *raw;
	size_t      rawlen;
};

struct mime_attachment {
	const char *filename;           /* UTF-8, "" if none */
	const char *type;               /* "application/pdf" (lowercase) */
	size_t      size;               /* decoded bytes */
	/* the decoded bytes (for magic and archive checks); NULL when the
	 * attachments of the message together exceed max_decoded */
	const unsigned char *data;
};

struct mime_url {
	const char *url;                /* normalised */
	const char *host;               /* lowercase, no port, no userinfo */
};

struct mime_msg;

/* once, at startup, before any thread parses */
void mime_init(void);

/* never NULL for a non-NULL data (a broken message still yields a result
 * with MIME_F_BROKEN); NULL with *err set (malloc'ed) only when GMime
 * cannot be started.  limits may be NULL for the defaults. */
struct mime_msg *mime_parse(const char *data, size_t len,
    const struct mime_limits *limits, char **err);
void mime_free(struct mime_msg **);

unsigned mime_flags(const struct mime_msg *);
unsigned mime_part_count(const struct mime_msg *);
unsigned mime_max_depth(const struct mime_msg *);

size_t mime_header_count(const struct mime_msg *);
const struct mime_header *mime_header_at(const struct mime_msg *, size_t i);
/* first header of that name (case-insensitive), or NULL */
const char *mime_header_get(const struct mime_msg *, const char *name);

size_t mime_text_count(const struct mime_msg *);
const struct mime_text *mime_text_at(const struct mime_msg *, size_t i);

size_t mime_attachment_count(const struct mime_msg *);
const struct mime_attachment *mime_attachment_at(const struct mime_msg *, size_t i);

size_t mime_url_count(const struct mime_msg *);
const struct mime_url *mime_url_at(const struct mime_msg *, size_t i);

/* the URIs as SpamAssassin's get_uri_detail_list() records them (what its
 * uri rules start from): HTML href/src/action values as written (entities
 * decoded, blanks trimmed), URLs found in the text with "http://" added to
 * "www." ones and trailing punctuation removed, e-mail addresses and
 * mailto: links as "mailto:...".  Not normalised, not lowercased. */
size_t mime_uri_count(const struct mime_msg *);
const char *mime_uri_at(const struct mime_msg *, size_t i);
/* the i-th URI was found in the text only (not in HTML): SpamAssassin
 * keeps such a URI only when a variant has a host with a known TLD */
bool mime_uri_parsed(const struct mime_msg *, size_t i);

/* helpers, exposed for the tests and for other filters.  Both write a
 * malloc'ed NUL-terminated UTF-8 string; *outlen excludes the NUL. */
char *mime_html_to_text(const char *html, size_t len, size_t *outlen,
    void (*href)(void *, const char *, size_t), void *arg);
/* normalise one URL ("HTTP://WWW.Ex.COM:80/a" -> "http://www.ex.com:80/a");
 * NULL if it is not a URL with a host.  *host gets a malloc'ed copy. */
char *mime_url_normalise(const char *s, size_t len, char **host);

#endif
