/*
 * imap_parse.h - the pure parts of the IMAP server: the command reader
 * (lines + literals, with limits, fed any number of bytes at a time), the
 * argument tokenizer, sequence sets and dates.  No I/O, no globals.
 */
#ifndef MOAT_IMAP_PARSE_H
#define MOAT_IMAP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "buf.h"

/* ---- the command reader ---- */

enum imap_rd {
	IMAP_RD_MORE,           /* need more bytes */
	IMAP_RD_CMD,            /* a complete command is in r->cmd */
	IMAP_RD_LITERAL,        /* a literal {n} / {n+} was announced: call imap_reader_literal() */
	IMAP_RD_TOOLONG,        /* the line exceeded max_line: the rest of the command is skipped */
};

struct imap_reader {
	struct buf cmd;         /* the command so far: lines with literals inline */
	size_t  max_line;       /* bytes of one line (without literals) */
	size_t  max_cmd;        /* bytes of the whole command (with literals) */
	size_t  linelen;        /* bytes of the current line */
	size_t  litleft;        /* literal bytes still to read */
	size_t  litsize;        /* the announced literal (IMAP_RD_LITERAL) */
	bool    litplus;        /* it was {n+} (LITERAL+, no continuation) */
	bool    skipping;       /* discarding up to the end of an overlong line */
	bool    cr;
	int     state;
};

void imap_reader_init(struct imap_reader *, size_t max_line, size_t max_cmd);
void imap_reader_free(struct imap_reader *);
/* consume bytes from p; *used = bytes taken.  Stop at each event. */
enum imap_rd imap_reader_feed(struct imap_reader *, const char *p, size_t len, size_t *used);
/* after IMAP_RD_LITERAL: accept (read the bytes) or refuse (the command is dropped;
 * for a {n+} literal the bytes are skipped) */
void imap_reader_literal(struct imap_reader *, bool accept);
/* start the next command (after IMAP_RD_CMD / IMAP_RD_TOOLONG handling) */
void imap_reader_reset(struct imap_reader *);

/* ---- arguments ---- */

enum imap_argt { IA_ATOM, IA_STRING, IA_LITERAL, IA_LIST, IA_NIL };

struct imap_arg {
	enum imap_argt type;
	const char *s;          /* atom/string text (points into the command, or a copy for quoted) */
	size_t  len;
	struct imap_arg *list;  /* IA_LIST */
	size_t  nlist;
	char   *owned;          /* unescaped quoted string */
};

/*
 * Tokenize p[0..len) (a command without its tag/name, or any part) into
 * *out (count *n).  Atoms may contain [...] sections with spaces/parens
 * (BODY[HEADER.FIELDS (A B)]<0.10>).  Depth of parentheses is bounded.
 * 0, or -1 with *error.
 */
int  imap_args_parse(const char *p, size_t len, struct imap_arg **out, size_t *n, const char **error);
void imap_args_free(struct imap_arg *, size_t n);
/* atom or string text as a NUL-terminated copy (caller frees), NULL if a list */
char *imap_arg_str(const struct imap_arg *);
bool imap_arg_is(const struct imap_arg *, const char *atom);    /* case-insensitive atom */

/* ---- sequence sets ---- */

struct imap_range { uint32_t lo, hi; };  /* UINT32_MAX stands for '*' */
struct imap_seqset { struct imap_range *r; size_t n; };

/* "1,3:5,7:*"; false if malformed (or more than max ranges) */
bool imap_seqset_parse(const char *p, size_t len, struct imap_seqset *);
void imap_seqset_free(struct imap_seqset *);
/* is v in the set, with '*' = star (largest number in use) */
bool imap_seqset_has(const struct imap_seqset *, uint32_t v, uint32_t star);

/* "1-Feb-2024" -> midnight UTC of that day; false if malformed */
bool imap_date_parse(const char *p, size_t len, time_t *out);
/* "17-Jul-1996 02:44:25 -0700" -> time; false if malformed */
bool imap_datetime_parse(const char *p, size_t len, time_t *out);
/* INTERNALDATE text "17-Jul-1996 02:44:25 +0000" (>= 27 bytes) */
void imap_datetime_fmt(time_t t, char *out, size_t outsz);

/* append s as an IMAP string: quoted if safe, else a literal; NULL -> NIL */
void imap_add_string(struct buf *, const char *s, size_t len);
void imap_add_nstring(struct buf *, const char *s);

#endif
