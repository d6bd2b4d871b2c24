/* test_util.c - sizes, durations, strings, buffers, log escaping */
#include "config.h"
#include "t.h"
#include "buf.h"
#include "log.h"
#include "util.h"
#include <stdlib.h>

int
main(void)
{
	char b[16];

	is_int(parse_size("1000"), 1000, "plain size");
	is_int(parse_size("64k"), 65536, "k suffix");
	is_int(parse_size("50M"), 52428800, "M suffix");
	is_int(parse_size("1G"), 1073741824LL, "G suffix");
	is_int(parse_size("12x"), -1, "bad suffix refused");
	is_int(parse_size("k"), -1, "no digits refused");
	is_int(parse_size("-5"), -1, "negative refused");
	is_int(parse_size("99999999999999999999"), -1, "overflow refused");
	is_int(parse_size("9999999999999G"), -1, "suffix overflow refused");
	is_int(parse_duration("30"), 30, "seconds");
	is_int(parse_duration("5m"), 300, "minutes");
	is_int(parse_duration("2h"), 7200, "hours");
	is_int(parse_duration("5d"), 432000, "days");
	is_int(parse_duration("1w"), 604800, "weeks");
	is_int(parse_duration("5ms"), -1, "two-letter suffix refused");

	long long v;
	ok(parse_ll("42", 0, 100, &v) && v == 42, "parse_ll in range");
	ok(!parse_ll("101", 0, 100, &v), "parse_ll above max");
	ok(!parse_ll(" 4", 0, 100, &v), "parse_ll leading blank");
	ok(!parse_ll("4 ", 0, 100, &v), "parse_ll trailing junk");
	ok(!parse_ll("", 0, 100, &v), "parse_ll empty");

	is_int(moat_strlcpy(b, "hello world, long", sizeof(b)), 17, "strlcpy returns source length");
	is_str(b, "hello world, lo", "strlcpy truncates and terminates");
	moat_strlcpy(b, "ab", sizeof(b));
	moat_strlcat(b, "cd", sizeof(b));
	is_str(b, "abcd", "strlcat");
	ok(ascii_strcasecmp("MAIL", "mail") == 0, "ascii case-insensitive compare");
	ok(ascii_prefix_ci("FROM:<x>", 8, "from:"), "prefix ci");
	ok(!ascii_prefix_ci("FRO", 3, "from:"), "prefix ci short");

	struct buf bf = BUF_INIT;
	for (int i = 0; i < 1000; i++)
		buf_printf(&bf, "%d,", i);
	ok(bf.len == 3890, "buf grows (%zu bytes)", bf.len);
	buf_consume(&bf, 4);
	ok(bf.data[0] == '2' && bf.data[1] == ',', "buf_consume");
	char *st = buf_steal(&bf);
	ok(bf.data == NULL && bf.len == 0 && st != NULL, "buf_steal empties");
	free(st);

	char out[64];
	log_esc("a\"b\\c\r\n\x01z", 9, out, sizeof(out));
	is_str(out, "a\\x22b\\x5cc\\x0d\\x0a\\x01z", "log_esc escapes quotes, backslash, controls");
	log_esc("0123456789012345678901234567890123456789", 40, out, 16);
	ok(strlen(out) < 16 && strstr(out, "...") != NULL, "log_esc truncates with ...");

	char d[64];
	rfc5322_date(0, d, sizeof(d));
	ok(strstr(d, "1970") != NULL || strstr(d, "1969") != NULL, "rfc5322_date: %s", d);
	return t_done();
}
