/*
 * fuzz_sasl.c - libFuzzer target for lib/sasl.c (all four mechanisms) and
 * the strict base64 decoder in lib/sasl_crypto.c.
 *
 * Input: byte 0 picks the mechanism (low 2 bits), whether the server nonce
 * is the fixed RFC 7677 one (bit 2, so the RFC exchange can be replayed)
 * and whether the first step is "no initial response" (bit 3).  The rest
 * is split at '\n' into at most 6 client responses; a response starting
 * with '!' is sent as is (raw base64 text, so the decoder is fuzzed),
 * otherwise it is base64-encoded first (so the mechanism parsers see
 * arbitrary bytes).  The user store is in memory: "user"/"pencil" with the
 * RFC 7677 salt, "tim"/"tanstaaftanstaaf".
 * Checks, besides ASan/UBSan: a challenge comes back exactly with
 * SASL_CONTINUE and is strict base64; SASL_OK names an authenticated
 * user; no step after the end succeeds.
 *
 *   mkdir -p /tmp/sasl && cp SRC/tests/fuzz/corpus/sasl/SEED /tmp/sasl (every seed)
 *   ./tests/fuzz/fuzz_sasl -max_total_time=600 /tmp/sasl
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sasl.h"
#include "sasl_crypto.h"
#include "users.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static int
fz_verify(void *arg, const char *user, const char *password)
{
	(void)arg;
	return (strcmp(user, "user") == 0 && strcmp(password, "pencil") == 0) ||
	    (strcmp(user, "tim") == 0 && strcmp(password, "tanstaaftanstaaf") == 0);
}

static int
fz_secrets(void *arg, const char *user, struct user_secrets *out)
{
	static const unsigned char salt[] = {   /* W22ZaJ0SNY7soEsUEjb6gQ== */
		0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
		0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81,
	};
	static struct user_secrets u, t;
	static bool init;

	(void)arg;
	if (!init) {
		if (users_derive_secrets("pencil", salt, sizeof(salt), 4096, &u) < 0 ||
		    users_derive_secrets("tanstaaftanstaaf", salt, sizeof(salt), 4096, &t) < 0)
			abort();
		init = true;
	}
	if (strcmp(user, "user") == 0)
		*out = u;
	else if (strcmp(user, "tim") == 0)
		*out = t;
	else {
		memset(out, 0, sizeof(*out));
		return 0;
	}
	return 1;
}

static const struct sasl_userdb fz_db = { fz_verify, fz_secrets, NULL, NULL };

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sasl_server *sv;
	enum sasl_status st = SASL_CONTINUE;
	const char *p, *end, *nl;
	int steps = 0;
	uint8_t ctl;

	if (size == 0)
		return 0;
	ctl = data[0];
	p = (const char *)data + 1;
	end = (const char *)data + size;
	sv = sasl_server_new((enum sasl_mech)(ctl & 3), "fuzz.example");
	CHECK(sv != NULL);
	if (ctl & 4)
		sasl_server_set_nonce(sv, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");

	if (ctl & 8) {
		char *out = NULL;
		st = sasl_server_step_db(sv, &fz_db, NULL, 0, &out);
		CHECK((st == SASL_CONTINUE) == (out != NULL));
		free(out);
	}
	while (st == SASL_CONTINUE && p <= end && steps++ < 6) {
		size_t len, inlen;
		char *in, *out = NULL;

		nl = memchr(p, '\n', (size_t)(end - p));
		len = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (len > 0 && p[0] == '!') {
			inlen = len - 1;
			in = malloc(inlen + 1);
			CHECK(in != NULL);
			memcpy(in, p + 1, inlen);       /* exact size: ASan sees overreads */
		} else {
			in = sasl_b64_encode_alloc(p, len);
			inlen = strlen(in);
		}
		st = sasl_server_step_db(sv, &fz_db, in, inlen, &out);
		CHECK((st == SASL_CONTINUE) == (out != NULL));
		if (out != NULL) {
			size_t ol = strlen(out), dl;
			unsigned char *dec = malloc(ol + 1);
			CHECK(dec != NULL);
			CHECK(sasl_b64_decode(out, ol, dec, ol, &dl));
			free(dec);
		}
		if (st == SASL_OK)
			CHECK(sasl_server_authenticated(sv) != NULL);
		else
			CHECK(sasl_server_authenticated(sv) == NULL);
		free(out);
		free(in);
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	if (st != SASL_CONTINUE) {
		char *out = NULL;
		CHECK(sasl_server_step_db(sv, &fz_db, "", 0, &out) == SASL_BAD_PROTOCOL);
		CHECK(out == NULL);
	}
	sasl_server_free(sv);
	return 0;
}
