/*
 * fuzz_spf_record.c - libFuzzer target for filters/spf_record.c, the
 * RFC 7208 checks every SPF record passes before libspf2 sees it, and the
 * explanation expander.
 *
 * Input: byte 0 bit 0 picks the client family (IPv6 when set); the rest
 * is the TXT text, with explicit length (NULs included).  Checks, besides
 * ASan/UBSan: an accepted record yields a canonical text that is itself
 * accepted and unchanged by a second pass (so what libspf2 compiles is
 * always in our grammar), free of control bytes.
 *
 *   mkdir -p /tmp/spf && cp SRC/tests/fuzz/corpus/spf/SEED /tmp/spf (every seed)
 *   ./tests/fuzz/fuzz_spf_record -max_total_time=600 /tmp/spf
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spf_record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char c1[SPF_RECORD_MAX + 64], c2[SPF_RECORD_MAX + 64], e[1024];
	static const struct spf_macro_vals v = { "a b@c.example", "a b", "c.example",
	    "c.example", "192.0.2.1", "unknown", "in-addr", "h.example", "192.0.2.1",
	    "mx.example", "1" };
	const char *why;
	bool v6;

	if (size < 1)
		return 0;
	v6 = data[0] & 1;
	data++;
	size--;
	if (spf_record_check((const char *)data, size, v6, c1, sizeof(c1), &why) == 0) {
		for (const char *p = c1; *p; p++)
			if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
				abort();
		/* the /0 suffix is ours: the canonical text may hold it */
		if (strstr(c1, SPF_CIDR0_SUFFIX) == NULL) {
			if (spf_record_check(c1, strlen(c1), v6, c2, sizeof(c2), &why) != 0 ||
			    strcmp(c1, c2) != 0)
				abort();
		}
	}
	(void)spf_expand_exp((const char *)data, size, &v, e, sizeof(e), &why);
	return 0;
}
