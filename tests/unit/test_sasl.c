/*
 * test_sasl.c - unit tests of lib/sasl.c and lib/sasl_crypto.c: strict
 * base64, MD5/HMAC-MD5 from stored states against OpenSSL, the RFC test
 * vectors (RFC 4616 PLAIN, RFC 2195 CRAM-MD5, RFC 7677 SCRAM-SHA-256),
 * LOGIN, malformed input answered with the right status, the real users
 * database end to end, and a random-input loop that must never crash.
 */
#include "config.h"
#include "sasl.h"
#include "sasl_crypto.h"
#include "users.h"
#include "util.h"
#include "t.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <sqlite3.h>

/* ---- a fake user store ---- */

struct fake_user {
	const char     *name;
	const char     *password;
	const char     *salt_b64;       /* NULL: no challenge secrets */
	unsigned        iter;
};

static const struct fake_user fake_users[] = {
	{ "tim", "tanstaafl", "c2FsdHNhbHRzYWx0", 4096 },
	{ "Kurt", "xipj3plmq", "a3VydHNhbHQ=", 4096 },
	{ "user", "pencil", "W22ZaJ0SNY7soEsUEjb6gQ==", 4096 },
	{ "old", "oldpw", NULL, 0 },
	{ "a,b=c", "commas", "c2FsdA==", 4096 },
};

static int fake_fail;                   /* make the store fail (-1) */
/*
 * RFC 4616 gives tim the password "tanstaafl", RFC 2195 the shared secret
 * "tanstaaftanstaaf": test_cram switches.
 */
static const char *tim_password = "tanstaafl";

static const struct fake_user *
fake_find(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(fake_users); i++)
		if (strcmp(fake_users[i].name, name) == 0)
			return &fake_users[i];
	return NULL;
}

static int
fake_verify(void *arg, const char *user, const char *password)
{
	const struct fake_user *f = fake_find(user);

	if (fake_fail)
		return -1;
	if (f && strcmp(f->name, "tim") == 0)
		return strcmp(tim_password, password) == 0;
	return f && strcmp(f->password, password) == 0;
}

static int
fake_secrets(void *arg, const char *user, struct user_secrets *out)
{
	const struct fake_user *f = fake_find(user);
	unsigned char salt[64];
	size_t sl;

	memset(out, 0, sizeof(*out));
	if (fake_fail)
		return -1;
	if (f == NULL)
		return 0;
	if (f->salt_b64 == NULL)
		return 1;
	if (!sasl_b64_decode(f->salt_b64, strlen(f->salt_b64), salt, sizeof(salt), &sl))
		return -1;
	return users_derive_secrets(strcmp(f->name, "tim") == 0 ? tim_password : f->password,
	    salt, sl, f->iter, out) == 0 ? 1 : -1;
}

static const struct sasl_userdb fake_db = { fake_verify, fake_secrets, NULL, NULL };

/* ---- helpers ---- */

static char *
b64(const char *s, size_t n)
{
	return sasl_b64_encode_alloc(s, n);
}

static char *
unb64(const char *s)
{
	size_t n = strlen(s), got;
	char *o = xmalloc(n + 1);

	if (!sasl_b64_decode(s, n, o, n, &got)) {
		free(o);
		return NULL;
	}
	o[got] = '\0';
	return o;
}

/* one step with raw (not yet base64) client data; NULL = no response */
static enum sasl_status
step_raw(struct sasl_server *sv, const char *raw, size_t n, char **out_dec)
{
	char *in = raw ? b64(raw, n) : NULL, *out = NULL;
	enum sasl_status st;

	st = sasl_server_step_db(sv, &fake_db, in, in ? strlen(in) : 0, &out);
	free(in);
	if (out_dec) {
		*out_dec = out ? unb64(out) : NULL;
	}
	free(out);
	return st;
}

static enum sasl_status
step_text(struct sasl_server *sv, const char *b64text)
{
	char *out = NULL;
	enum sasl_status st = sasl_server_step_db(sv, &fake_db, b64text, strlen(b64text), &out);

	free(out);
	return st;
}

/* a SCRAM client: client-final for the given password */
static char *
scram_client_final(const char *password, const char *cfb, const char *sfm, const char *cbind_b64)
{
	unsigned char salt[128], salted[32], ckey[32], skey[32], sig[32], proof[32];
	char saltb[200], nonce[400], without[600], am[1500], pb[64];
	const char *r, *s, *i;
	size_t sl, n;
	unsigned iter;

	r = strstr(sfm, "r=");
	s = strstr(sfm, ",s=");
	i = strstr(sfm, ",i=");
	if (!r || !s || !i)
		return NULL;
	snprintf(nonce, sizeof(nonce), "%.*s", (int)(s - r - 2), r + 2);
	snprintf(saltb, sizeof(saltb), "%.*s", (int)(i - s - 3), s + 3);
	iter = (unsigned)atoi(i + 3);
	if (!sasl_b64_decode(saltb, strlen(saltb), salt, sizeof(salt), &sl))
		return NULL;
	PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)sl, (int)iter, EVP_sha256(),
	    32, salted);
	sasl_hmac_sha256(salted, 32, "Client Key", 10, ckey);
	sasl_sha256(ckey, 32, skey);            /* StoredKey */
	snprintf(without, sizeof(without), "c=%s,r=%s", cbind_b64, nonce);
	snprintf(am, sizeof(am), "%s,%s,%s", cfb, sfm, without);
	sasl_hmac_sha256(skey, 32, am, strlen(am), sig);
	for (n = 0; n < 32; n++)
		proof[n] = ckey[n] ^ sig[n];
	sasl_b64_encode(proof, 32, pb, sizeof(pb));
	snprintf(am, sizeof(am), "%s,p=%s", without, pb);
	return xstrdup(am);
}

/* ---- base64 ---- */

static void
test_base64(void)
{
	unsigned char buf[64], rnd[40];
	char enc[128];
	size_t n, k;
	int i, bad = 0;

	ok(sasl_b64_decode("Zm9vYmFy", 8, buf, sizeof(buf), &n) && n == 6 &&
	    memcmp(buf, "foobar", 6) == 0, "b64: foobar");
	ok(sasl_b64_decode("Zg==", 4, buf, sizeof(buf), &n) && n == 1 && buf[0] == 'f', "b64: Zg==");
	ok(sasl_b64_decode("Zm8=", 4, buf, sizeof(buf), &n) && n == 2, "b64: Zm8=");
	ok(sasl_b64_decode("", 0, buf, sizeof(buf), &n) && n == 0, "b64: empty");
	ok(!sasl_b64_decode("Zh==", 4, buf, sizeof(buf), &n), "b64: non-zero pad bits refused");
	ok(!sasl_b64_decode("Zm9=", 4, buf, sizeof(buf), &n), "b64: non-zero pad bits refused (1 pad)");
	ok(!sasl_b64_decode("Zg=", 3, buf, sizeof(buf), &n), "b64: length not a multiple of 4");
	ok(!sasl_b64_decode("Z===", 4, buf, sizeof(buf), &n), "b64: three pads");
	ok(!sasl_b64_decode("Zg==Zg==", 8, buf, sizeof(buf), &n), "b64: padding in the middle");
	ok(!sasl_b64_decode("Zg=a", 4, buf, sizeof(buf), &n), "b64: data after padding");
	ok(!sasl_b64_decode(" Zg=", 4, buf, sizeof(buf), &n), "b64: blank");
	ok(!sasl_b64_decode("Zm9v\r\n", 6, buf, sizeof(buf), &n), "b64: CRLF");
	ok(!sasl_b64_decode("Zm-v", 4, buf, sizeof(buf), &n), "b64: url-safe alphabet refused");
	ok(!sasl_b64_decode("Zm9v\0mFy", 8, buf, sizeof(buf), &n), "b64: embedded NUL");
	ok(!sasl_b64_decode("Zm9vYmFy", 8, buf, 5, &n), "b64: output too small");
	ok(sasl_b64_encode("f", 1, enc, 4) == (size_t)-1, "b64 encode: output too small");
	for (i = 0; i < 200; i++) {
		k = (size_t)(i % 41);
		random_bytes(rnd, k);
		sasl_b64_encode(rnd, k, enc, sizeof(enc));
		if (!sasl_b64_decode(enc, strlen(enc), buf, sizeof(buf), &n) || n != k ||
		    memcmp(buf, rnd, k) != 0)
			bad++;
	}
	is_int(bad, 0, "b64: 200 random round trips");
}

/* ---- MD5 from states vs OpenSSL ---- */

static void
test_cram_crypto(void)
{
	unsigned char key[100], msg[300], ctx[32], a[16], b[16];
	size_t outl, kl, ml;
	int i, bad = 0;

	for (i = 0; i < 300; i++) {
		kl = (size_t)(i % 100);
		ml = (size_t)((i * 7) % 300);
		random_bytes(key, kl);
		random_bytes(msg, ml);
		sasl_cram_md5_ctx(key, kl, ctx);
		sasl_cram_md5_hmac(ctx, msg, ml, a);
		if (EVP_Q_mac(NULL, "HMAC", NULL, "MD5", NULL, kl ? key : (unsigned char *)"", kl,
		    msg, ml, b, sizeof(b), &outl) == NULL || outl != 16 || memcmp(a, b, 16) != 0)
			bad++;
	}
	is_int(bad, 0, "HMAC-MD5 from stored states equals EVP_MAC HMAC-MD5 (300 key/msg lengths)");

	/* Dovecot's CRAM-MD5 scheme value for "tanstaafl" would be the same bytes;
	 * check the RFC 2195 digest through the stored context */
	sasl_cram_md5_ctx("tanstaaftanstaaf", 16, ctx);
	sasl_cram_md5_hmac(ctx, "<1896.697170952@postoffice.reston.mci.net>", 42, a);
	{
		char hex[33];
		for (i = 0; i < 16; i++)
			snprintf(hex + 2 * i, 3, "%02x", a[i]);
		is_str(hex, "b913a602c7eda7a495b4e6e7334d3890", "RFC 2195 digest from the stored context");
	}
}

/* ---- mechanisms ---- */

static void
test_mechs(void)
{
	enum sasl_mech m;

	ok(sasl_mech_lookup("PLAIN", 5, &m) && m == SASL_PLAIN, "lookup PLAIN");
	ok(sasl_mech_lookup("login", 5, &m) && m == SASL_LOGIN, "lookup login (case-insensitive)");
	ok(sasl_mech_lookup("CRAM-MD5", 8, &m) && m == SASL_CRAM_MD5, "lookup CRAM-MD5");
	ok(sasl_mech_lookup("SCRAM-SHA-256", 13, &m) && m == SASL_SCRAM_SHA_256, "lookup SCRAM-SHA-256");
	ok(!sasl_mech_lookup("SCRAM-SHA-256-PLUS", 18, &m), "no -PLUS");
	ok(!sasl_mech_lookup("PLAINX", 5 + 1, &m), "unknown mechanism");
	ok(!sasl_mech_lookup("PLAI", 4, &m), "prefix is not a mechanism");
	ok(sasl_mech_sends_password(SASL_PLAIN) && sasl_mech_sends_password(SASL_LOGIN) &&
	    !sasl_mech_sends_password(SASL_CRAM_MD5) && !sasl_mech_sends_password(SASL_SCRAM_SHA_256),
	    "PLAIN and LOGIN send the password");
	is_str(sasl_mech_name(SASL_CRAM_MD5), "CRAM-MD5", "mech name");
}

static void
plain_case(const char *raw, size_t n, enum sasl_status want, const char *what)
{
	struct sasl_server *sv = sasl_server_new(SASL_PLAIN, "mx.example.net");
	enum sasl_status st = step_raw(sv, raw, n, NULL);

	is_int(st, want, "PLAIN %s -> %s", what, sasl_status_name(want));
	if (st != want)
		printf("#   got %s\n", sasl_status_name(st));
	sasl_server_free(sv);
}

static void
test_plain(void)
{
	struct sasl_server *sv;
	char *out = NULL, big[SASL_MAX_B64 + 8];

	/* RFC 4616 section 4 examples */
	plain_case("\0tim\0tanstaafl", 14, SASL_OK, "RFC 4616 \\0tim\\0tanstaafl");
	plain_case("Ursel\0Kurt\0xipj3plmq", 20, SASL_FAILED, "RFC 4616 authzid Ursel for Kurt (refused)");
	plain_case("\0Kurt\0xipj3plmq", 15, SASL_OK, "Kurt without authzid");
	plain_case("Kurt\0Kurt\0xipj3plmq", 19, SASL_OK, "authzid equal to authcid");
	plain_case("\0tim\0tanstaafX", 14, SASL_FAILED, "wrong password");
	plain_case("\0nobody\0tanstaafl", 17, SASL_FAILED, "unknown user");
	plain_case("\0tim\0tan\tstaafl", 15, SASL_FAILED, "control character in the password");
	plain_case("\0t\x7fim\0tanstaafl", 15, SASL_FAILED, "DEL in the user name");
	plain_case("\0tim\0tan\xc2\x85staafl", 16, SASL_FAILED, "UTF-8 C1 control (NEL) in the password");
	plain_case("tim tanstaafl", 13, SASL_BAD_PROTOCOL, "no NUL");
	plain_case("\0timtanstaafl", 13, SASL_BAD_PROTOCOL, "one NUL");
	plain_case("\0tim\0tans\0taafl", 15, SASL_BAD_PROTOCOL, "three NULs");
	plain_case("\0\0tanstaafl", 11, SASL_BAD_PROTOCOL, "empty authcid");
	plain_case("\0tim\0", 5, SASL_BAD_PROTOCOL, "empty password");

	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(sasl_server_step_db(sv, &fake_db, NULL, 0, &out), SASL_CONTINUE, "PLAIN without initial response: continue");
	is_str(out, "", "PLAIN: empty challenge");
	free(out);
	is_int(step_raw(sv, "\0tim\0tanstaafl", 14, NULL), SASL_OK, "PLAIN: then the message");
	is_str(sasl_server_authenticated(sv), "tim", "PLAIN: authenticated tim");
	is_str(sasl_server_user(sv), "tim", "PLAIN: user tim");
	is_int(step_raw(sv, "\0tim\0tanstaafl", 14, NULL), SASL_BAD_PROTOCOL, "PLAIN: a step after the end");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(step_text(sv, "="), SASL_BAD_PROTOCOL, "PLAIN: '=' (empty initial response) is malformed");
	ok(sasl_server_authenticated(sv) == NULL, "PLAIN: nobody authenticated");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(step_text(sv, "*"), SASL_CANCELLED, "PLAIN: '*' cancels");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(step_text(sv, "AHRpbQB0YW5zdGFhZmw"), SASL_BAD_PROTOCOL, "PLAIN: unpadded base64");
	sasl_server_free(sv);
	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(step_text(sv, "AHRpbQB0YW5z!GFhZmw="), SASL_BAD_PROTOCOL, "PLAIN: garbage in base64");
	sasl_server_free(sv);

	memset(big, 'A', sizeof(big));
	big[SASL_MAX_B64 + 4] = '\0';
	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(step_text(sv, big), SASL_BAD_PROTOCOL, "PLAIN: over-long response");
	sasl_server_free(sv);

	fake_fail = 1;
	plain_case("\0tim\0tanstaafl", 14, SASL_TEMPFAIL, "store down");
	fake_fail = 0;
}

static void
test_login(void)
{
	struct sasl_server *sv;
	char *out = NULL, *d;

	sv = sasl_server_new(SASL_LOGIN, NULL);
	is_int(sasl_server_step_db(sv, &fake_db, NULL, 0, &out), SASL_CONTINUE, "LOGIN: continue");
	is_str(out, "VXNlcm5hbWU6", "LOGIN: Username: challenge");
	free(out);
	is_int(step_raw(sv, "tim", 3, &d), SASL_CONTINUE, "LOGIN: user name");
	is_str(d, "Password:", "LOGIN: Password: challenge");
	free(d);
	is_int(step_raw(sv, "tanstaafl", 9, NULL), SASL_OK, "LOGIN: password");
	is_str(sasl_server_authenticated(sv), "tim", "LOGIN: authenticated tim");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_LOGIN, NULL);
	is_int(step_raw(sv, "tim", 3, &d), SASL_CONTINUE, "LOGIN: user name as initial response");
	is_str(d, "Password:", "LOGIN: then Password:");
	free(d);
	is_int(step_raw(sv, "wrong", 5, NULL), SASL_FAILED, "LOGIN: wrong password");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_LOGIN, NULL);
	is_int(step_raw(sv, NULL, 0, NULL), SASL_CONTINUE, "LOGIN: start");
	is_int(step_raw(sv, "ti\0m", 4, NULL), SASL_BAD_PROTOCOL, "LOGIN: NUL in the user name");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_LOGIN, NULL);
	is_int(step_raw(sv, NULL, 0, NULL), SASL_CONTINUE, "LOGIN: start");
	is_int(step_raw(sv, "tim", 3, NULL), SASL_CONTINUE, "LOGIN: user");
	is_int(step_text(sv, "*"), SASL_CANCELLED, "LOGIN: cancel at the password");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_LOGIN, NULL);
	is_int(step_raw(sv, "nobody", 6, NULL), SASL_CONTINUE, "LOGIN: unknown user still asked for a password");
	is_int(step_raw(sv, "tanstaafl", 9, NULL), SASL_FAILED, "LOGIN: unknown user fails");
	is_str(sasl_server_user(sv), "nobody", "LOGIN: user name kept for the log");
	sasl_server_free(sv);
}

static void
test_cram(void)
{
	struct sasl_server *sv;
	char *out = NULL, *d;
	const char *resp = "tim b913a602c7eda7a495b4e6e7334d3890";

	tim_password = "tanstaaftanstaaf";      /* RFC 2195's shared secret */

	sv = sasl_server_new(SASL_CRAM_MD5, "postoffice.reston.mci.net");
	sasl_server_set_nonce(sv, "1896.697170952");
	is_int(sasl_server_step_db(sv, &fake_db, NULL, 0, &out), SASL_CONTINUE, "CRAM-MD5: challenge");
	is_str(out, "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+",
	    "CRAM-MD5: RFC 2195 challenge, base64");
	free(out);
	is_int(step_raw(sv, resp, strlen(resp), NULL), SASL_OK, "CRAM-MD5: RFC 2195 response accepted");
	is_str(sasl_server_authenticated(sv), "tim", "CRAM-MD5: authenticated tim");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_CRAM_MD5, "postoffice.reston.mci.net");
	sasl_server_set_nonce(sv, "1896.697170952");
	step_raw(sv, NULL, 0, NULL);
	is_int(step_raw(sv, "tim B913A602C7EDA7A495B4E6E7334D3890", 36, NULL), SASL_OK,
	    "CRAM-MD5: upper-case hex accepted");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_CRAM_MD5, "postoffice.reston.mci.net");
	sasl_server_set_nonce(sv, "1896.697170953");
	step_raw(sv, NULL, 0, NULL);
	is_int(step_raw(sv, resp, strlen(resp), NULL), SASL_FAILED,
	    "CRAM-MD5: the response to another challenge fails");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_CRAM_MD5, "h");
	step_raw(sv, NULL, 0, &d);
	ok(d && d[0] == '<' && strstr(d, "@h>") != NULL, "CRAM-MD5: random challenge <...@h>: %s", d ? d : "");
	free(d);
	is_int(step_raw(sv, "nobody b913a602c7eda7a495b4e6e7334d3890", 39, NULL), SASL_FAILED,
	    "CRAM-MD5: unknown user");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_CRAM_MD5, "h");
	step_raw(sv, NULL, 0, NULL);
	is_int(step_raw(sv, "old b913a602c7eda7a495b4e6e7334d3890", 36, NULL), SASL_FAILED,
	    "CRAM-MD5: user without stored secrets fails");
	sasl_server_free(sv);

	sv = sasl_server_new(SASL_CRAM_MD5, "h");
	step_raw(sv, NULL, 0, NULL);
	is_int(step_raw(sv, "tim b913a602c7eda7a495b4e6e7334d389", 35, NULL), SASL_BAD_PROTOCOL,
	    "CRAM-MD5: short digest");
	sasl_server_free(sv);
	sv = sasl_server_new(SASL_CRAM_MD5, "h");
	step_raw(sv, NULL, 0, NULL);
	is_int(step_raw(sv, "tim b913a602c7eda7a495b4e6e7334d389g", 36, NULL), SASL_BAD_PROTOCOL,
	    "CRAM-MD5: non-hex digest");
	sasl_server_free(sv);
	sv = sasl_server_new(SASL_CRAM_MD5, "h");
	step_raw(sv, NULL, 0, NULL);
	is_int(step_raw(sv, " b913a602c7eda7a495b4e6e7334d3890", 33, NULL), SASL_BAD_PROTOCOL,
	    "CRAM-MD5: no user name");
	sasl_server_free(sv);
	sv = sasl_server_new(SASL_CRAM_MD5, "h");
	is_int(step_raw(sv, resp, strlen(resp), NULL), SASL_BAD_PROTOCOL,
	    "CRAM-MD5: an initial response is a protocol error");
	sasl_server_free(sv);
	tim_password = "tanstaafl";
}

#define RFC7677_CF  "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
#define RFC7677_SF  "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC7677_CFN "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC7677_SFN "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
#define RFC7677_SN  "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"

static struct sasl_server *
scram_rfc(const char *cf, enum sasl_status want1, const char *what)
{
	struct sasl_server *sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	enum sasl_status st;
	char *d = NULL;

	sasl_server_set_nonce(sv, RFC7677_SN);
	st = step_raw(sv, cf, strlen(cf), &d);
	is_int(st, want1, "SCRAM %s -> %s", what, sasl_status_name(want1));
	free(d);
	return sv;
}

static void
scram_final_case(const char *cf, const char *cfn, enum sasl_status want, const char *what)
{
	struct sasl_server *sv = scram_rfc(cf, SASL_CONTINUE, "client-first");
	enum sasl_status st = step_raw(sv, cfn, strlen(cfn), NULL);

	is_int(st, want, "SCRAM %s -> %s", what, sasl_status_name(want));
	sasl_server_free(sv);
}

static void
test_scram(void)
{
	struct sasl_server *sv;
	char *d = NULL, *d2 = NULL, *out = NULL, *fin;

	/* RFC 7677 section 3 */
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	sasl_server_set_nonce(sv, RFC7677_SN);
	is_int(step_raw(sv, RFC7677_CF, strlen(RFC7677_CF), &d), SASL_CONTINUE, "SCRAM: client-first");
	is_str(d, RFC7677_SF, "SCRAM: RFC 7677 server-first");
	free(d);
	is_int(step_raw(sv, RFC7677_CFN, strlen(RFC7677_CFN), &d), SASL_CONTINUE,
	    "SCRAM: RFC 7677 client proof accepted");
	is_str(d, RFC7677_SFN, "SCRAM: RFC 7677 server signature");
	free(d);
	ok(sasl_server_authenticated(sv) == NULL, "SCRAM: not authenticated before the final ack");
	is_int(step_raw(sv, "", 0, NULL), SASL_OK, "SCRAM: empty response after server-final");
	is_str(sasl_server_authenticated(sv), "user", "SCRAM: authenticated user");
	sasl_server_free(sv);

	/* without initial response */
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	sasl_server_set_nonce(sv, RFC7677_SN);
	is_int(sasl_server_step_db(sv, &fake_db, NULL, 0, &out), SASL_CONTINUE, "SCRAM: no initial response");
	is_str(out, "", "SCRAM: empty challenge");
	free(out);
	is_int(step_raw(sv, RFC7677_CF, strlen(RFC7677_CF), NULL), SASL_CONTINUE, "SCRAM: then client-first");
	is_int(step_raw(sv, RFC7677_CFN, strlen(RFC7677_CFN), NULL), SASL_CONTINUE, "SCRAM: then client-final");
	is_int(step_raw(sv, "x", 1, NULL), SASL_BAD_PROTOCOL, "SCRAM: non-empty answer to server-final");
	ok(sasl_server_authenticated(sv) == NULL, "SCRAM: and nobody is authenticated");
	sasl_server_free(sv);

	/* wrong proof, replayed/altered nonce, channel-binding mismatch */
	scram_final_case(RFC7677_CF,
	    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU=",
	    SASL_FAILED, "wrong proof");
	scram_final_case(RFC7677_CF,
	    "c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
	    SASL_FAILED, "client nonce only (no server nonce)");
	scram_final_case(RFC7677_CF,
	    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k1,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
	    SASL_FAILED, "altered nonce");
	scram_final_case(RFC7677_CF,
	    "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
	    SASL_FAILED, "c= does not repeat the gs2 header");
	scram_final_case(RFC7677_CF,
	    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
	    SASL_BAD_PROTOCOL, "no proof");
	scram_final_case(RFC7677_CF,
	    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndV",
	    SASL_BAD_PROTOCOL, "truncated proof");
	scram_final_case(RFC7677_CF, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,c=biws,p=AAAA",
	    SASL_BAD_PROTOCOL, "attributes out of order");
	scram_final_case(RFC7677_CF, "c=biws,r=x\x01y,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
	    SASL_BAD_PROTOCOL, "control character");

	/* the same nonce in a second exchange: a replay gets another server nonce */
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	step_raw(sv, RFC7677_CF, strlen(RFC7677_CF), &d);
	ok(d && strncmp(d, "r=rOprNGfwEbeRWgbNEkqO", 22) == 0 && strncmp(d, RFC7677_SF, 52) != 0,
	    "SCRAM: random server nonce appended to the client nonce");
	free(d);
	is_int(step_raw(sv, RFC7677_CFN, strlen(RFC7677_CFN), NULL), SASL_FAILED,
	    "SCRAM: replayed RFC 7677 client-final fails against a fresh server nonce");
	sasl_server_free(sv);

	/* client-first problems */
	sasl_server_free(scram_rfc("p=tls-unique,,n=user,r=abc", SASL_FAILED, "channel binding p= refused"));
	sasl_server_free(scram_rfc("y,,n=user,r=rOprNGfwEbeRWgbNEkqO", SASL_CONTINUE, "'y' accepted (no -PLUS offered)"));
	sasl_server_free(scram_rfc("x,,n=user,r=abc", SASL_BAD_PROTOCOL, "unknown gs2 flag"));
	sasl_server_free(scram_rfc("n,n=user,r=abc", SASL_BAD_PROTOCOL, "gs2 header missing a comma"));
	sasl_server_free(scram_rfc("n,,m=x,n=user,r=abc", SASL_FAILED, "mandatory extension m="));
	sasl_server_free(scram_rfc("n,,n=,r=abc", SASL_BAD_PROTOCOL, "empty user name"));
	sasl_server_free(scram_rfc("n,,n=user,r=", SASL_BAD_PROTOCOL, "empty nonce"));
	sasl_server_free(scram_rfc("n,,n=user", SASL_BAD_PROTOCOL, "no nonce"));
	sasl_server_free(scram_rfc("n,,n=us=3Cer,r=abc", SASL_BAD_PROTOCOL, "bad saslname escape"));
	sasl_server_free(scram_rfc("n,,n=user,r=abc,x", SASL_BAD_PROTOCOL, "garbage extension"));
	sasl_server_free(scram_rfc("n,,n=user,r=abc,x=1", SASL_CONTINUE, "extension ignored"));
	sasl_server_free(scram_rfc("n,a=other,n=user,r=abc", SASL_FAILED, "authzid for another user refused"));
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	is_int(step_raw(sv, "n,,n=us\0er,r=abc", 17, NULL), SASL_BAD_PROTOCOL, "SCRAM NUL in client-first");
	sasl_server_free(sv);
	sasl_server_free(scram_rfc("n,,n=a=2Cb=3Dc,r=abc", SASL_CONTINUE, "escaped user name a,b=c"));

	/* authzid equal to the user, full exchange with 'y' */
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	{
		const char *cf = "y,a=user,n=user,r=clientnonce";
		step_raw(sv, cf, strlen(cf), &d);
		fin = d ? scram_client_final("pencil", cf + 9, d, "eSxhPXVzZXIs") : NULL;
		is_int(fin ? step_raw(sv, fin, strlen(fin), NULL) : SASL_FAILED, SASL_CONTINUE,
		    "SCRAM: 'y' with authzid=user, c=base64(\"y,a=user,\")");
		is_int(step_raw(sv, "", 0, NULL), SASL_OK, "SCRAM: ack");
		free(fin);
		free(d);
	}
	sasl_server_free(sv);

	/* unknown user: a plausible, stable server-first, then failure */
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	sasl_server_set_nonce(sv, "N");
	step_raw(sv, "n,,n=nobody,r=abc", 17, &d);
	sasl_server_free(sv);
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	sasl_server_set_nonce(sv, "N");
	step_raw(sv, "n,,n=nobody,r=abc", 17, &d2);
	ok(d && d2 && strcmp(d, d2) == 0 && strstr(d, ",i=4096") != NULL,
	    "SCRAM: unknown user gets the same salt twice: %s", d ? d : "");
	fin = d ? scram_client_final("pencil", "n=nobody,r=abc", d, "biws") : NULL;
	is_int(fin ? step_raw(sv, fin, strlen(fin), NULL) : SASL_CONTINUE, SASL_FAILED, "SCRAM: unknown user fails");
	free(fin);
	free(d);
	free(d2);
	sasl_server_free(sv);

	/* user without stored secrets */
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	step_raw(sv, "n,,n=old,r=abc", 14, &d);
	fin = d ? scram_client_final("oldpw", "n=old,r=abc", d, "biws") : NULL;
	is_int(fin ? step_raw(sv, fin, strlen(fin), NULL) : SASL_CONTINUE, SASL_FAILED,
	    "SCRAM: user without SCRAM secrets fails");
	free(fin);
	free(d);
	sasl_server_free(sv);

	fake_fail = 1;
	sasl_server_free(scram_rfc(RFC7677_CF, SASL_TEMPFAIL, "store down"));
	fake_fail = 0;
}

/* ---- the real users database ---- */

static void
test_users_db(void)
{
	char dir[] = "/tmp/moat-test-sasl-XXXXXX", path[PATH_MAX], *err = NULL;
	struct sasl_server *sv;
	struct users *u;
	char *out = NULL, *d = NULL, *fin, *in;
	unsigned char mac[16];
	char resp[300];
	size_t ml;
	int i;

	if (mkdtemp(dir) == NULL) {
		ok(0, "mkdtemp");
		return;
	}
	snprintf(path, sizeof(path), "%s/moat.db", dir);
	u = users_open(path, true, &err);
	ok(u != NULL, "users db: open");
	if (u == NULL)
		return;
	is_int(users_add(u, "Alice@Example.NET", "s3cret pw", &err), 0, "users db: add alice");

	/* PLAIN with the address in another case: authenticated canonical */
	in = b64("\0ALICE@example.net\0s3cret pw", 28);
	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(sasl_server_step(sv, u, in, strlen(in), &out), SASL_OK, "users db: PLAIN ok");
	is_str(sasl_server_authenticated(sv), "alice@example.net", "users db: canonical user");
	is_str(sasl_server_user(sv), "ALICE@example.net", "users db: user as given");
	sasl_server_free(sv);
	free(in);
	in = b64("alice@example.net\0Alice@Example.net\0s3cret pw", 45);
	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(sasl_server_step(sv, u, in, strlen(in), &out), SASL_OK,
	    "users db: PLAIN authzid equal after canonicalisation");
	sasl_server_free(sv);
	free(in);

	/* CRAM-MD5 with a random challenge, client computed with OpenSSL */
	sv = sasl_server_new(SASL_CRAM_MD5, "mx.example.net");
	is_int(sasl_server_step(sv, u, NULL, 0, &out), SASL_CONTINUE, "users db: CRAM-MD5 challenge");
	d = unb64(out);
	free(out);
	EVP_Q_mac(NULL, "HMAC", NULL, "MD5", NULL, "s3cret pw", 9, (unsigned char *)d, strlen(d), mac, 16, &ml);
	snprintf(resp, sizeof(resp), "alice@example.net ");
	for (i = 0; i < 16; i++)
		snprintf(resp + strlen(resp), 3, "%02x", mac[i]);
	in = b64(resp, strlen(resp));
	is_int(sasl_server_step(sv, u, in, strlen(in), &out), SASL_OK, "users db: CRAM-MD5 ok");
	is_str(sasl_server_authenticated(sv), "alice@example.net", "users db: CRAM-MD5 user");
	free(in);
	free(d);
	sasl_server_free(sv);

	/* SCRAM-SHA-256 with random nonces */
	sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
	in = b64("n,,n=alice@example.net,r=fyko+d2lbbFgONRv9qkxdawL", 49);
	is_int(sasl_server_step(sv, u, in, strlen(in), &out), SASL_CONTINUE, "users db: SCRAM first");
	free(in);
	d = unb64(out);
	free(out);
	fin = scram_client_final("s3cret pw", "n=alice@example.net,r=fyko+d2lbbFgONRv9qkxdawL", d, "biws");
	in = b64(fin, strlen(fin));
	is_int(sasl_server_step(sv, u, in, strlen(in), &out), SASL_CONTINUE, "users db: SCRAM proof ok");
	free(out);
	is_int(sasl_server_step(sv, u, "", 0, &out), SASL_OK, "users db: SCRAM ok");
	free(in);
	free(fin);
	free(d);
	sasl_server_free(sv);

	/* a user from before the secrets existed: PLAIN yes, CRAM-MD5/SCRAM no */
	{
		sqlite3 *db;
		ok(sqlite3_open(path, &db) == SQLITE_OK && sqlite3_exec(db,
		    "UPDATE users SET cram_md5 = NULL, scram_sha256 = NULL", NULL, NULL, NULL) == SQLITE_OK,
		    "users db: clear the secrets");
		sqlite3_close(db);
	}
	in = b64("\0alice@example.net\0s3cret pw", 28);
	sv = sasl_server_new(SASL_PLAIN, NULL);
	is_int(sasl_server_step(sv, u, in, strlen(in), &out), SASL_OK, "users db: old user, PLAIN ok");
	sasl_server_free(sv);
	free(in);
	sv = sasl_server_new(SASL_CRAM_MD5, "mx.example.net");
	sasl_server_step(sv, u, NULL, 0, &out);
	d = unb64(out);
	free(out);
	EVP_Q_mac(NULL, "HMAC", NULL, "MD5", NULL, "s3cret pw", 9, (unsigned char *)d, strlen(d), mac, 16, &ml);
	snprintf(resp, sizeof(resp), "alice@example.net ");
	for (i = 0; i < 16; i++)
		snprintf(resp + strlen(resp), 3, "%02x", mac[i]);
	in = b64(resp, strlen(resp));
	is_int(sasl_server_step(sv, u, in, strlen(in), &out), SASL_FAILED,
	    "users db: old user, CRAM-MD5 fails");
	free(in);
	free(d);
	sasl_server_free(sv);

	users_close(u);
	{
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd) != 0)
			printf("# could not remove %s\n", dir);
	}
}

/* ---- random input: never crash, never authenticate ---- */

static unsigned long long rng = 88172645463325252ULL;

static unsigned
rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)rng;
}

static void
test_random(void)
{
	static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=*, \0";
	static const char *seeds[] = {
		RFC7677_CF, RFC7677_CFN, "\0tim\0tanstaafl", "tim b913a602c7eda7a495b4e6e7334d3890",
		"n,a=user,n=user,r=abc,x=1", "y,,n=a=2Cb,r=x", "",
	};
	char raw[600], text[900], *out;
	int iter, oks = 0, crashes = 0;
	size_t k, n, s;

	for (iter = 0; iter < 3000; iter++) {
		struct sasl_server *sv = sasl_server_new((enum sasl_mech)(rnd() % 4), "h");
		enum sasl_status st = SASL_CONTINUE;
		int steps = 0;

		if (rnd() % 2)
			sasl_server_set_nonce(sv, RFC7677_SN);
		while (st == SASL_CONTINUE && steps++ < 4) {
			out = NULL;
			switch (rnd() % 4) {
			case 0:         /* random text from the base64 alphabet and friends */
				n = rnd() % 40;
				for (k = 0; k < n; k++)
					text[k] = alpha[rnd() % (sizeof(alpha) - 1)];
				st = sasl_server_step_db(sv, &fake_db, text, n, &out);
				break;
			case 1:         /* random bytes, base64-encoded */
				n = rnd() % 200;
				for (k = 0; k < n; k++)
					raw[k] = (char)rnd();
				sasl_b64_encode(raw, n, text, sizeof(text));
				st = sasl_server_step_db(sv, &fake_db, text, strlen(text), &out);
				break;
			default:        /* a mutated or truncated seed, base64-encoded */
				s = rnd() % ARRAY_SIZE(seeds);
				n = strlen(seeds[s]);
				if (s == 2)
					n = 14;
				memcpy(raw, seeds[s], n);
				if (n > 0 && rnd() % 2)
					raw[rnd() % n] = (char)rnd();
				if (n > 0 && rnd() % 2)
					n = rnd() % n;
				sasl_b64_encode(raw, n, text, sizeof(text));
				st = sasl_server_step_db(sv, &fake_db, text, strlen(text), &out);
				break;
			}
			if ((st == SASL_CONTINUE) != (out != NULL))
				crashes++;
			free(out);
		}
		if (st == SASL_OK)
			oks++;
		sasl_server_free(sv);
	}
	is_int(crashes, 0, "random input: challenge returned exactly with CONTINUE");
	ok(oks < 30, "random input: hardly ever authenticates (%d; only unmutated seeds can)", oks);

	/* every prefix of the RFC 7677 messages, byte at a time */
	{
		int bad = 0;
		for (n = 0; n < strlen(RFC7677_CF); n++) {
			struct sasl_server *sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
			if (step_raw(sv, RFC7677_CF, n, NULL) == SASL_OK)
				bad++;
			sasl_server_free(sv);
		}
		for (n = 0; n < strlen(RFC7677_CFN); n++) {
			struct sasl_server *sv = sasl_server_new(SASL_SCRAM_SHA_256, NULL);
			enum sasl_status st;
			sasl_server_set_nonce(sv, RFC7677_SN);
			if (step_raw(sv, RFC7677_CF, strlen(RFC7677_CF), NULL) != SASL_CONTINUE)
				bad++;
			st = step_raw(sv, RFC7677_CFN, n, NULL);
			if (st == SASL_OK || st == SASL_CONTINUE)
				bad++;
			sasl_server_free(sv);
		}
		is_int(bad, 0, "every truncation of the RFC 7677 messages is refused");
	}
}

int
main(void)
{
	test_base64();
	test_cram_crypto();
	test_mechs();
	test_plain();
	test_login();
	test_cram();
	test_scram();
	test_users_db();
	test_random();
	return t_done();
}
