/*
 * fuzz_smtp_data.c - libFuzzer target for the DATA reader
 * (smtp_data_init/smtp_data_feed in gateway/smtp_parse.h).
 *
 * Input layout: byte 0 picks max_line, byte 1 picks max_size, bytes 2..9
 * are a table of chunk sizes; the rest is the byte stream that follows the
 * 354 reply.  The stream is fed once in a single call and once in the
 * chunking chosen by the table, and the two runs must agree.  Checked:
 *   - consumed <= len on every call, nothing is fed after done;
 *   - the end of data is exact: done iff the stream holds a terminator per
 *     the rule in smtp_parse.h (a "." line ending in CRLF that follows a
 *     line ending in CRLF, or the start of data), and the consumed count
 *     ends right after the FIRST such terminator;
 *   - the output never holds a bare LF; its size is at most the consumed
 *     size plus one per bare LF (bare LF is rewritten as CRLF) and at most
 *     max_size; reader.size agrees with it;
 *   - flags: BARE_LF / NUL are set iff the consumed bytes hold one (unless
 *     the message was too big), LONG_LINE iff a line exceeded max_line
 *     (give or take the CRLF);
 *   - for clean input (CRLF only, no NUL, no long line, not too big) the
 *     output is exactly the dot-unstuffed message;
 *   - raw mode (BDAT): never done, all consumed, output == input for clean
 *     input, same invariants otherwise.
 *
 *   ./fuzz_smtp_data -max_total_time=600 corpus/data
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

struct out {
	char   *p;
	size_t  len, cap;
	bool    last_cr;        /* last emitted byte was CR (across calls) */
	bool    bare_lf;        /* the output held a bare LF */
};

static void
emit(void *arg, const char *p, size_t len)
{
	struct out *o = arg;

	if (len == 0)
		return;
	CHECK(p != NULL);
	if (o->len + len > o->cap) {
		size_t n = o->cap ? o->cap : 256;
		while (n < o->len + len)
			n *= 2;
		o->p = realloc(o->p, n);
		CHECK(o->p != NULL);
		o->cap = n;
	}
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\n' && !o->last_cr)
			o->bare_lf = true;
		o->last_cr = p[i] == '\r';
	}
	memcpy(o->p + o->len, p, len);
	o->len += len;
}

struct run {
	struct out out;
	size_t consumed;
	bool done;
	unsigned flags;
	size_t size;
};

static void
feed(const char *s, size_t len, size_t max_line, size_t max_size,
    const uint8_t *table, bool raw, struct run *r)
{
	struct smtp_data_reader rd;
	size_t pos = 0, i = 0;

	memset(r, 0, sizeof(*r));
	smtp_data_init(&rd, max_line, max_size);
	rd.raw = raw;
	while (pos < len && !r->done) {
		size_t n = len - pos;
		if (table != NULL) {
			uint8_t t = table[i++ % 8];
			if (t < 0xf0)
				n = (size_t)(t % 37) + 1;
			if (n > len - pos)
				n = len - pos;
		}
		/* an exact-size copy so ASan sees any read past the chunk */
		char *chunk = malloc(n ? n : 1);
		CHECK(chunk != NULL);
		memcpy(chunk, s + pos, n);
		bool done = false;
		size_t c = smtp_data_feed(&rd, chunk, n, emit, &r->out, &done);
		free(chunk);
		CHECK(c <= n);
		if (!done)
			CHECK(c == n);          /* nothing may be left behind mid-message */
		pos += c;
		r->done = done;
		if (i > len + 16)
			break;
	}
	r->consumed = pos;
	r->flags = rd.flags;
	r->size = rd.size;
}

/* first terminator per the rule; returns the offset just past it, or 0 */
static size_t
ref_end(const char *s, size_t len)
{
	bool prev_crlf = true;
	size_t start = 0;

	for (size_t i = 0; i < len; i++) {
		if (s[i] != '\n')
			continue;
		bool crlf = i > start && s[i - 1] == '\r';
		if (prev_crlf && crlf && i - start == 2 && s[start] == '.')
			return i + 1;
		prev_crlf = crlf;
		start = i + 1;
	}
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 10)
		return 0;
	size_t max_line = 16 + (size_t)data[0] * 4;             /* 16 .. 1036 */
	size_t max_size = data[1] & 0x80 ? (size_t)1 << 30 : 32 + (size_t)(data[1] & 0x7f) * 16;
	const uint8_t *table = data + 2;
	const char *s = (const char *)data + 10;
	size_t len = size - 10;

	struct run one, many;
	feed(s, len, max_line, max_size, NULL, false, &one);
	feed(s, len, max_line, max_size, table, false, &many);

	/* the chunking must not matter */
	CHECK(one.done == many.done);
	CHECK(one.consumed == many.consumed);
	CHECK(one.flags == many.flags);
	CHECK(one.size == many.size);
	CHECK(one.out.len == many.out.len);
	CHECK(one.out.len == 0 || memcmp(one.out.p, many.out.p, one.out.len) == 0);

	struct run *r = &one;
	size_t end = ref_end(s, len);
	if (end) {
		CHECK(r->done);
		CHECK(r->consumed == end);
	} else {
		CHECK(!r->done);
		CHECK(r->consumed == len);
	}

	/* facts about the consumed bytes */
	size_t nbare = 0, longest = 0, cur = 0;
	bool nul = false;
	for (size_t i = 0; i < r->consumed; i++) {
		cur++;
		if (s[i] == '\0')
			nul = true;
		if (s[i] == '\n') {
			if (i == 0 || s[i - 1] != '\r')
				nbare++;
			if (cur > longest)
				longest = cur;
			cur = 0;
		}
	}
	if (cur > longest)
		longest = cur;

	bool too_big = (r->flags & SMTP_DATA_TOO_BIG) != 0;
	CHECK(!r->out.bare_lf);
	CHECK(r->out.len <= r->consumed + nbare);
	CHECK(r->out.len <= max_size);
	if (too_big)
		CHECK(r->size > max_size);
	else
		CHECK(r->size == r->out.len);

	CHECK(!(r->flags & SMTP_DATA_BARE_LF) || nbare > 0);
	CHECK(!(r->flags & SMTP_DATA_NUL) || nul);
	CHECK(!(r->flags & SMTP_DATA_LONG_LINE) || longest + 2 >= max_line);
	if (!too_big) {
		CHECK(!nbare || (r->flags & SMTP_DATA_BARE_LF));
		CHECK(!nul || (r->flags & SMTP_DATA_NUL));
		CHECK(longest <= max_line + 2 || (r->flags & SMTP_DATA_LONG_LINE));
	}

	/* clean input: exactly the dot-unstuffed message */
	if (r->done && r->flags == 0 && nbare == 0) {
		char *want = malloc(r->consumed + 1);
		size_t wl = 0, ls = 0;
		CHECK(want != NULL);
		for (size_t i = 0; i < r->consumed; i++) {
			if (s[i] != '\n')
				continue;
			/* line [ls, i] incl. CRLF */
			size_t a = ls;
			if (s[a] == '.')
				a++;
			if (!(ls + 3 == i + 1 && i + 1 == r->consumed)) {     /* not the terminator */
				memcpy(want + wl, s + a, i + 1 - a);
				wl += i + 1 - a;
			}
			ls = i + 1;
		}
		CHECK(r->out.len == wl);
		CHECK(wl == 0 || memcmp(r->out.p, want, wl) == 0);
		free(want);
	}
	free(one.out.p);
	free(many.out.p);

	/* BDAT content (raw): never done, everything consumed, no dot
	 * handling; bare LF still becomes CRLF */
	feed(s, len, max_line, max_size, NULL, true, &one);
	feed(s, len, max_line, max_size, table, true, &many);
	CHECK(!one.done && !many.done);
	CHECK(one.consumed == len && many.consumed == len);
	CHECK(one.flags == many.flags && one.size == many.size);
	CHECK(one.out.len == many.out.len);
	CHECK(one.out.len == 0 || memcmp(one.out.p, many.out.p, one.out.len) == 0);
	CHECK(!one.out.bare_lf);
	CHECK(one.out.len <= max_size);
	nbare = 0;
	for (size_t i = 0; i < len; i++)
		if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
			nbare++;
	CHECK(one.out.len <= len + nbare);
	if (one.flags == 0 && nbare == 0) {
		/* a trailing CR stays pending: it may start a CRLF across chunks */
		size_t want = len > 0 && s[len - 1] == '\r' ? len - 1 : len;
		CHECK(one.out.len == want);
		CHECK(want == 0 || memcmp(one.out.p, s, want) == 0);
	}
	free(one.out.p);
	free(many.out.p);
	return 0;
}
