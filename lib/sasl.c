/*
 * sasl.c - server-side SASL mechanisms as state machines without I/O:
 * PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256 (see sasl.h for the contract).
 *
 * Runs in: worker pool threads (BLOCKING: crypt(3) through users_verify,
 * SQLite reads through users_get_secrets).
 * Untrusted input: every client response.  Limits: at most SASL_MAX_B64
 * base64 characters per response, strictly decoded into a heap buffer of
 * exactly the decoded size plus a NUL; names <= SASL_NAME_MAX bytes,
 * passwords <= SASL_PASSWORD_MAX, SCRAM client nonces <= SASL_NONCE_MAX;
 * an embedded NUL (other than PLAIN's two separators) is a protocol error.
 * Secrets: compared with CRYPTO_memcmp; decoded responses (which hold
 * passwords), keys and proofs are wiped with OPENSSL_cleanse.
 * Timing: unknown users and users without challenge secrets go through the
 * same computations on dummy secrets (sasl.h "Timing").
 */
#include "config.h"
#include "sasl.h"
#include "sasl_crypto.h"
#include "users.h"
#include "util.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

/*
 * We never advertise SCRAM-SHA-256-PLUS.  If that changes, a client-first
 * gs2 flag 'y' ("I support channel binding but think you do not") signals
 * a downgrade and must be refused (RFC 5802 section 6): set this to true.
 */
#define SASL_SCRAM_PLUS_ADVERTISED  false
#define SASL_SNONCE_BYTES           18      /* 24 base64 characters, no padding */

enum sasl_state {
	ST_START,
	ST_PLAIN,               /* sent the empty challenge, waiting for the message */
	ST_LOGIN_USER,
	ST_LOGIN_PASS,
	ST_CRAM,
	ST_SCRAM_FIRST,         /* sent the empty challenge, waiting for client-first */
	ST_SCRAM_FINAL,         /* sent server-first, waiting for client-final */
	ST_SCRAM_ACK,           /* sent server-final, waiting for the empty response */
	ST_DONE,
};

struct sasl_server {
	enum sasl_mech  mech;
	enum sasl_state st;
	char            host[256];
	char            nonce[65];              /* test override, "" = random */
	char           *user;                   /* name given by the client */
	char           *auth;                   /* canonical name after SASL_OK */
	char           *login_user;             /* LOGIN: between the two steps */
	char           *chal;                   /* CRAM-MD5 challenge text */
	/* SCRAM-SHA-256 */
	char           *gs2;                    /* gs2 header as sent */
	size_t          gs2len;
	char           *cfb;                    /* client-first-message-bare */
	char           *sfm;                    /* server-first-message */
	char           *fullnonce;
	bool            scram_real;             /* false: dummy keys, always fails */
	unsigned char   stored_key[SASL_SHA256_LEN];
	unsigned char   server_key[SASL_SHA256_LEN];
};

/* per-process random key for dummy secrets (unknown users) */
static unsigned char sasl_dummy_key[32];
static pthread_once_t sasl_dummy_once = PTHREAD_ONCE_INIT;

static void
sasl_dummy_init(void)
{
	random_bytes(sasl_dummy_key, sizeof(sasl_dummy_key));
}

/* HMAC(dummy key, label || name): stable per name for this process */
static void
sasl_dummy(const char *label, const char *name, unsigned char out[SASL_SHA256_LEN])
{
	char buf[16 + SASL_NAME_MAX + 1];
	int n;

	pthread_once(&sasl_dummy_once, sasl_dummy_init);
	n = snprintf(buf, sizeof(buf), "%s:%s", label, name);
	if (n < 0 || (size_t)n >= sizeof(buf))
		n = (int)sizeof(buf) - 1;
	if (!sasl_hmac_sha256(sasl_dummy_key, sizeof(sasl_dummy_key), buf, (size_t)n, out))
		random_bytes(out, SASL_SHA256_LEN);
}

/* ---- mechanisms ---- */

static const char *const sasl_mech_names[] = {
	[SASL_PLAIN] = "PLAIN",
	[SASL_LOGIN] = "LOGIN",
	[SASL_CRAM_MD5] = "CRAM-MD5",
	[SASL_SCRAM_SHA_256] = "SCRAM-SHA-256",
};

bool
sasl_mech_lookup(const char *name, size_t len, enum sasl_mech *out)
{
	size_t i;

	if (name == NULL)
		return false;
	for (i = 0; i < ARRAY_SIZE(sasl_mech_names); i++) {
		if (strlen(sasl_mech_names[i]) == len &&
		    ascii_strncasecmp(name, sasl_mech_names[i], len) == 0) {
			*out = (enum sasl_mech)i;
			return true;
		}
	}
	return false;
}

const char *
sasl_mech_name(enum sasl_mech m)
{
	return (unsigned)m < ARRAY_SIZE(sasl_mech_names) ? sasl_mech_names[m] : "?";
}

bool
sasl_mech_sends_password(enum sasl_mech m)
{
	return m == SASL_PLAIN || m == SASL_LOGIN;
}

const char *
sasl_status_name(enum sasl_status s)
{
	switch (s) {
	case SASL_CONTINUE:     return "continue";
	case SASL_OK:           return "ok";
	case SASL_FAILED:       return "failed";
	case SASL_BAD_PROTOCOL: return "bad-protocol";
	case SASL_CANCELLED:    return "cancelled";
	case SASL_TEMPFAIL:     return "tempfail";
	}
	return "?";
}

struct sasl_server *
sasl_server_new(enum sasl_mech mech, const char *hostname)
{
	struct sasl_server *sv;

	if ((unsigned)mech >= ARRAY_SIZE(sasl_mech_names))
		return NULL;
	sv = xcalloc(1, sizeof(*sv));
	sv->mech = mech;
	sv->st = ST_START;
	if (hostname == NULL || hostname[0] == '\0' ||
	    moat_strlcpy(sv->host, hostname, sizeof(sv->host)) >= sizeof(sv->host))
		moat_strlcpy(sv->host, "localhost", sizeof(sv->host));
	return sv;
}

void
sasl_server_set_nonce(struct sasl_server *sv, const char *nonce)
{
	size_t i, n = strlen(nonce);

	if (n == 0 || n >= sizeof(sv->nonce))
		return;
	for (i = 0; i < n; i++)
		if (nonce[i] < 0x21 || nonce[i] > 0x7e || nonce[i] == ',')
			return;
	memcpy(sv->nonce, nonce, n + 1);
}

static void
sasl_free_str(char **p)
{
	if (*p) {
		OPENSSL_cleanse(*p, strlen(*p));
		free(*p);
		*p = NULL;
	}
}

void
sasl_server_free(struct sasl_server *sv)
{
	if (sv == NULL)
		return;
	free(sv->user);
	free(sv->auth);
	sasl_free_str(&sv->login_user);
	free(sv->chal);
	free(sv->gs2);
	free(sv->cfb);
	free(sv->sfm);
	free(sv->fullnonce);
	OPENSSL_cleanse(sv, sizeof(*sv));
	free(sv);
}

const char *
sasl_server_user(const struct sasl_server *sv)
{
	return sv->user;
}

const char *
sasl_server_authenticated(const struct sasl_server *sv)
{
	return sv->st == ST_DONE ? sv->auth : NULL;
}

enum sasl_mech
sasl_server_mech(const struct sasl_server *sv)
{
	return sv->mech;
}

/* ---- helpers ---- */

/* SASLprep-prohibited control characters: C0, DEL, UTF-8 encoded C1 */
static bool
sasl_has_controls(const unsigned char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			return true;
		if (p[i] == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f)
			return true;
	}
	return false;
}

static bool
sasl_valid_name(const char *p, size_t n)
{
	return n > 0 && n <= SASL_NAME_MAX && !sasl_has_controls((const unsigned char *)p, n);
}

static void
sasl_set_user(struct sasl_server *sv, const char *name, size_t n)
{
	free(sv->user);
	sv->user = xstrndup(name, MIN(n, SASL_NAME_MAX));
}

static bool
sasl_canon(const struct sasl_userdb *db, const char *name, char *out, size_t outsz)
{
	if (db->canon)
		return db->canon(db->arg, name, out, outsz);
	return moat_strlcpy(out, name, outsz) < outsz;
}

/* the authzid names the authcid itself (directly or canonically) */
static bool
sasl_same_identity(const struct sasl_userdb *db, const char *authz, const char *authc)
{
	char a[SASL_NAME_MAX + 1], b[SASL_NAME_MAX + 1];

	if (strcmp(authz, authc) == 0)
		return true;
	return sasl_canon(db, authz, a, sizeof(a)) && sasl_canon(db, authc, b, sizeof(b)) &&
	    strcmp(a, b) == 0;
}

static enum sasl_status
sasl_succeed(struct sasl_server *sv, const struct sasl_userdb *db, const char *name)
{
	char c[SASL_NAME_MAX + 1];

	if (!sasl_canon(db, name, c, sizeof(c)))
		return SASL_FAILED;
	free(sv->auth);
	sv->auth = xstrdup(c);
	sv->st = ST_DONE;
	return SASL_OK;
}

static enum sasl_status
sasl_challenge(struct sasl_server *sv, enum sasl_state next, const void *data, size_t len,
    char **out)
{
	*out = sasl_b64_encode_alloc(data, len);
	sv->st = next;
	return SASL_CONTINUE;
}

/* ---- PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd ---- */

static enum sasl_status
sasl_plain(struct sasl_server *sv, const struct sasl_userdb *db, char *msg, size_t n)
{
	char *authz, *authc, *pw, *nul1, *nul2;
	size_t zl, cl, pl;
	int r;

	if ((nul1 = memchr(msg, '\0', n)) == NULL)
		return SASL_BAD_PROTOCOL;
	if ((nul2 = memchr(nul1 + 1, '\0', n - (size_t)(nul1 + 1 - msg))) == NULL)
		return SASL_BAD_PROTOCOL;
	if (memchr(nul2 + 1, '\0', n - (size_t)(nul2 + 1 - msg)) != NULL)
		return SASL_BAD_PROTOCOL;
	authz = msg;
	zl = (size_t)(nul1 - msg);
	authc = nul1 + 1;
	cl = (size_t)(nul2 - authc);
	pw = nul2 + 1;
	pl = n - (size_t)(pw - msg);            /* msg[n] is the NUL we added */
	if (cl == 0 || pl == 0)
		return SASL_BAD_PROTOCOL;
	sasl_set_user(sv, authc, cl);
	if (!sasl_valid_name(authc, cl) || (zl > 0 && !sasl_valid_name(authz, zl)) ||
	    pl > SASL_PASSWORD_MAX || sasl_has_controls((unsigned char *)pw, pl))
		return SASL_FAILED;
	if (zl > 0 && !sasl_same_identity(db, authz, authc))
		return SASL_FAILED;
	r = db->verify(db->arg, authc, pw);
	if (r < 0)
		return SASL_TEMPFAIL;
	if (r == 0)
		return SASL_FAILED;
	return sasl_succeed(sv, db, authc);
}

/* ---- LOGIN: "Username:" / "Password:" ---- */

static enum sasl_status
sasl_login_user(struct sasl_server *sv, char *msg, size_t n, char **out)
{
	if (n == 0 || memchr(msg, '\0', n))
		return SASL_BAD_PROTOCOL;
	sasl_set_user(sv, msg, n);
	if (!sasl_valid_name(msg, n))
		return SASL_FAILED;
	sv->login_user = xstrndup(msg, n);
	return sasl_challenge(sv, ST_LOGIN_PASS, "Password:", 9, out);
}

static enum sasl_status
sasl_login_pass(struct sasl_server *sv, const struct sasl_userdb *db, char *msg, size_t n)
{
	int r;

	if (n == 0 || memchr(msg, '\0', n))
		return SASL_BAD_PROTOCOL;
	if (n > SASL_PASSWORD_MAX || sasl_has_controls((unsigned char *)msg, n))
		return SASL_FAILED;
	r = db->verify(db->arg, sv->login_user, msg);
	if (r < 0)
		return SASL_TEMPFAIL;
	if (r == 0)
		return SASL_FAILED;
	return sasl_succeed(sv, db, sv->login_user);
}

/* ---- CRAM-MD5 (RFC 2195) ---- */

static enum sasl_status
sasl_cram_start(struct sasl_server *sv, char **out)
{
	char buf[sizeof(sv->nonce) + sizeof(sv->host) + 48];
	uint64_t r;

	if (sv->nonce[0] != '\0')
		snprintf(buf, sizeof(buf), "<%s@%s>", sv->nonce, sv->host);
	else {
		random_bytes(&r, sizeof(r));
		snprintf(buf, sizeof(buf), "<%llu.%lld@%s>", (unsigned long long)r,
		    (long long)time(NULL), sv->host);
	}
	sv->chal = xstrdup(buf);
	return sasl_challenge(sv, ST_CRAM, buf, strlen(buf), out);
}

static int
sasl_hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static enum sasl_status
sasl_cram(struct sasl_server *sv, const struct sasl_userdb *db, char *msg, size_t n)
{
	unsigned char want[SASL_MD5_LEN], got[SASL_MD5_LEN], dummy[SASL_SHA256_LEN];
	struct user_secrets sec;
	const unsigned char *ctx;
	char *sp;
	size_t i, ul;
	bool real;
	int r;

	/* "user SP 32 hex digits"; the name may itself contain spaces */
	if (n < 34 || memchr(msg, '\0', n) || msg[n - 33] != ' ')
		return SASL_BAD_PROTOCOL;
	sp = msg + n - 33;
	for (i = 0; i < SASL_MD5_LEN; i++) {
		int hi = sasl_hexval((unsigned char)sp[1 + 2 * i]);
		int lo = sasl_hexval((unsigned char)sp[2 + 2 * i]);
		if (hi < 0 || lo < 0)
			return SASL_BAD_PROTOCOL;
		got[i] = (unsigned char)(hi << 4 | lo);
	}
	ul = (size_t)(sp - msg);
	*sp = '\0';
	sasl_set_user(sv, msg, ul);
	if (!sasl_valid_name(msg, ul))
		return SASL_FAILED;

	r = db->secrets(db->arg, msg, &sec);
	if (r < 0) {
		users_secrets_clear(&sec);
		return SASL_TEMPFAIL;
	}
	real = r == 1 && sec.has_cram_md5;
	sasl_dummy("cram", msg, dummy);
	/* the dummy is 32 bytes like a CRAM context: same work either way */
	ctx = real ? sec.cram_md5 : dummy;
	sasl_cram_md5_hmac(ctx, sv->chal, strlen(sv->chal), want);
	r = CRYPTO_memcmp(want, got, sizeof(want));
	users_secrets_clear(&sec);
	OPENSSL_cleanse(want, sizeof(want));
	OPENSSL_cleanse(dummy, sizeof(dummy));
	if (r != 0 || !real)
		return SASL_FAILED;
	return sasl_succeed(sv, db, msg);
}

/* ---- SCRAM-SHA-256 (RFC 5802, RFC 7677) ---- */

/*
 * saslname up to ',' or end: "=2C" -> ',', "=3D" -> '=', any other '='
 * is malformed.  Returns the position after it or NULL.
 */
static const char *
sasl_saslname(const char *p, const char *end, char *out, size_t outsz, size_t *outlen)
{
	size_t o = 0;

	while (p < end && *p != ',') {
		char c = *p;
		if (c == '=') {
			if (end - p < 3)
				return NULL;
			if (p[1] == '2' && p[2] == 'C')
				c = ',';
			else if (p[1] == '3' && p[2] == 'D')
				c = '=';
			else
				return NULL;
			p += 3;
		} else
			p++;
		if (o + 1 >= outsz)
			return NULL;
		out[o++] = c;
	}
	out[o] = '\0';
	*outlen = o;
	return o > 0 ? p : NULL;
}

/* printable except ',' (RFC 5802 "printable") up to ',' or end */
static const char *
sasl_printable(const char *p, const char *end, size_t *len)
{
	const char *s = p;

	while (p < end && *p != ',') {
		if (*p < 0x21 || *p > 0x7e)
			return NULL;
		p++;
	}
	*len = (size_t)(p - s);
	return p;
}

/* optional extensions: *("," ALPHA "=" 1*value-char) up to end */
static bool
sasl_scram_exts(const char *p, const char *end)
{
	size_t l;

	while (p < end) {
		if (end - p < 4 || p[0] != ',' ||
		    !((p[1] >= 'a' && p[1] <= 'z') || (p[1] >= 'A' && p[1] <= 'Z')) || p[2] != '=')
			return false;
		if ((p = sasl_printable(p + 3, end, &l)) == NULL || l == 0)
			return false;
	}
	return true;
}

static enum sasl_status
sasl_scram_first(struct sasl_server *sv, const struct sasl_userdb *db, char *msg, size_t n,
    char **out)
{
	char name[SASL_NAME_MAX + 1], authz[SASL_NAME_MAX + 1];
	char snonce[sizeof(sv->nonce)], b_salt[SASL_B64_ENCLEN(USERS_SCRAM_SALT_MAX)];
	unsigned char salt[USERS_SCRAM_SALT_MAX], d[SASL_SHA256_LEN];
	const char *p = msg, *end = msg + n, *bare, *cnonce;
	struct user_secrets sec;
	size_t namelen, authzlen = 0, cnlen, saltlen;
	unsigned iter;
	bool y = false;
	int r;

	for (size_t i = 0; i < n; i++)
		if ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f)
			return SASL_BAD_PROTOCOL;

	/* gs2-header: ("n" / "y" / "p=" cb-name) "," [ "a=" saslname ] "," */
	if (n >= 2 && p[0] == 'p' && p[1] == '=')
		return SASL_FAILED;             /* channel binding: not supported */
	if (n < 3 || (p[0] != 'n' && p[0] != 'y') || p[1] != ',')
		return SASL_BAD_PROTOCOL;
	y = p[0] == 'y';
	if (y && SASL_SCRAM_PLUS_ADVERTISED)
		return SASL_FAILED;             /* downgrade from -PLUS */
	p += 2;
	if (p + 1 < end && p[0] == 'a' && p[1] == '=') {
		if ((p = sasl_saslname(p + 2, end, authz, sizeof(authz), &authzlen)) == NULL)
			return SASL_BAD_PROTOCOL;
	}
	if (p >= end || *p != ',')
		return SASL_BAD_PROTOCOL;
	p++;
	bare = p;

	/* client-first-message-bare: [reserved-mext ","] "n=" saslname ",r=" nonce [exts] */
	if (end - p >= 2 && p[0] == 'm' && p[1] == '=')
		return SASL_FAILED;             /* mandatory extension we do not know */
	if (end - p < 2 || p[0] != 'n' || p[1] != '=')
		return SASL_BAD_PROTOCOL;
	if ((p = sasl_saslname(p + 2, end, name, sizeof(name), &namelen)) == NULL)
		return SASL_BAD_PROTOCOL;
	if (end - p < 4 || memcmp(p, ",r=", 3) != 0)
		return SASL_BAD_PROTOCOL;
	cnonce = p + 3;
	if ((p = sasl_printable(cnonce, end, &cnlen)) == NULL || cnlen == 0 ||
	    cnlen > SASL_NONCE_MAX)
		return SASL_BAD_PROTOCOL;
	if (!sasl_scram_exts(p, end))
		return SASL_BAD_PROTOCOL;

	sasl_set_user(sv, name, namelen);
	if (strlen(name) != namelen || !sasl_valid_name(name, namelen))
		return SASL_FAILED;
	if (authzlen > 0 && (strlen(authz) != authzlen || !sasl_same_identity(db, authz, name)))
		return SASL_FAILED;

	r = db->secrets(db->arg, name, &sec);
	if (r < 0) {
		users_secrets_clear(&sec);
		return SASL_TEMPFAIL;
	}
	sv->scram_real = r == 1 && sec.has_scram;
	/*
	 * A stable fake for unknown users, so asking twice does not tell
	 * made-up from real; computed for everybody so the time is the same.
	 */
	sasl_dummy("salt", name, d);
	sasl_dummy("stored", name, sv->stored_key);
	sasl_dummy("server", name, sv->server_key);
	saltlen = USERS_SCRAM_SALT_LEN;
	memcpy(salt, d, saltlen);
	iter = USERS_SCRAM_ITER;
	if (sv->scram_real) {
		saltlen = sec.scram_saltlen;
		memcpy(salt, sec.scram_salt, saltlen);
		iter = sec.scram_iter;
		memcpy(sv->stored_key, sec.scram_stored_key, sizeof(sv->stored_key));
		memcpy(sv->server_key, sec.scram_server_key, sizeof(sv->server_key));
	}
	OPENSSL_cleanse(d, sizeof(d));
	users_secrets_clear(&sec);

	if (sv->nonce[0] != '\0')
		moat_strlcpy(snonce, sv->nonce, sizeof(snonce));
	else {
		unsigned char rb[SASL_SNONCE_BYTES];
		random_bytes(rb, sizeof(rb));
		(void)sasl_b64_encode(rb, sizeof(rb), snonce, sizeof(snonce));
	}
	(void)sasl_b64_encode(salt, saltlen, b_salt, sizeof(b_salt));

	sv->gs2len = (size_t)(bare - msg);
	sv->gs2 = xstrndup(msg, sv->gs2len);
	sv->cfb = xstrndup(bare, (size_t)(end - bare));
	{
		size_t fl = cnlen + strlen(snonce) + 1;
		size_t sl = fl + strlen(b_salt) + 32;
		sv->fullnonce = xmalloc(fl);
		snprintf(sv->fullnonce, fl, "%.*s%s", (int)cnlen, cnonce, snonce);
		sv->sfm = xmalloc(sl);
		snprintf(sv->sfm, sl, "r=%s,s=%s,i=%u", sv->fullnonce, b_salt, iter);
	}
	return sasl_challenge(sv, ST_SCRAM_FINAL, sv->sfm, strlen(sv->sfm), out);
}

static enum sasl_status
sasl_scram_final(struct sasl_server *sv, const struct sasl_userdb *db, char *msg, size_t n,
    char **out)
{
	unsigned char cb[128], proof[SASL_SHA256_LEN + 3], sig[SASL_SHA256_LEN];
	unsigned char key[SASL_SHA256_LEN], h[SASL_SHA256_LEN];
	char b_sig[SASL_B64_ENCLEN(SASL_SHA256_LEN)], final[8 + sizeof(b_sig)];
	const char *p, *end, *pp = NULL, *v, *q;
	size_t cblen, prooflen, vl, wl, al, i;
	char *am;
	bool match;

	for (i = 0; i < n; i++)
		if ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f)
			return SASL_BAD_PROTOCOL;
	/* the proof is the last attribute */
	for (q = msg; (q = strstr(q, ",p=")) != NULL; q++)
		pp = q;
	if (pp == NULL)
		return SASL_BAD_PROTOCOL;
	wl = (size_t)(pp - msg);                /* client-final-message-without-proof */
	if (!sasl_b64_decode(pp + 3, n - wl - 3, proof, sizeof(proof), &prooflen) ||
	    prooflen != SASL_SHA256_LEN)
		return SASL_BAD_PROTOCOL;

	p = msg;
	end = msg + wl;
	if (end - p < 2 || p[0] != 'c' || p[1] != '=')
		return SASL_BAD_PROTOCOL;
	v = p + 2;
	if ((p = sasl_printable(v, end, &vl)) == NULL)
		return SASL_BAD_PROTOCOL;
	if (!sasl_b64_decode(v, vl, cb, sizeof(cb), &cblen))
		return SASL_BAD_PROTOCOL;
	if (end - p < 3 || memcmp(p, ",r=", 3) != 0)
		return SASL_BAD_PROTOCOL;
	v = p + 3;
	if ((p = sasl_printable(v, end, &vl)) == NULL || !sasl_scram_exts(p, end))
		return SASL_BAD_PROTOCOL;
	/* c= is our gs2 header again (no channel binding data); r= our nonce */
	if (cblen != sv->gs2len || memcmp(cb, sv->gs2, cblen) != 0)
		return SASL_FAILED;
	if (vl != strlen(sv->fullnonce) || memcmp(v, sv->fullnonce, vl) != 0)
		return SASL_FAILED;

	/* AuthMessage = client-first-bare "," server-first "," client-final-without-proof */
	al = strlen(sv->cfb) + 1 + strlen(sv->sfm) + 1 + wl;
	am = xmalloc(al + 1);
	snprintf(am, al + 1, "%s,%s,%.*s", sv->cfb, sv->sfm, (int)wl, msg);

	/* ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); H(ClientKey) == StoredKey */
	match = sasl_hmac_sha256(sv->stored_key, sizeof(sv->stored_key), am, al, sig);
	for (i = 0; i < SASL_SHA256_LEN; i++)
		key[i] = proof[i] ^ sig[i];
	match = sasl_sha256(key, sizeof(key), h) && match;
	match = CRYPTO_memcmp(h, sv->stored_key, sizeof(h)) == 0 && match && sv->scram_real;
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(proof, sizeof(proof));
	if (!match ||
	    !sasl_hmac_sha256(sv->server_key, sizeof(sv->server_key), am, al, sig)) {
		OPENSSL_cleanse(sig, sizeof(sig));
		free(am);
		return SASL_FAILED;
	}
	free(am);
	if (sasl_succeed(sv, db, sv->user) != SASL_OK) {
		OPENSSL_cleanse(sig, sizeof(sig));
		return SASL_FAILED;
	}
	(void)sasl_b64_encode(sig, sizeof(sig), b_sig, sizeof(b_sig));
	snprintf(final, sizeof(final), "v=%s", b_sig);
	OPENSSL_cleanse(sig, sizeof(sig));
	return sasl_challenge(sv, ST_SCRAM_ACK, final, strlen(final), out);
}

/* ---- the step ---- */

enum sasl_status
sasl_server_step_db(struct sasl_server *sv, const struct sasl_userdb *db,
    const char *in, size_t len, char **out)
{
	enum sasl_state st = sv->st;
	enum sasl_status rs = SASL_BAD_PROTOCOL;
	char *msg = NULL;
	size_t n = 0, cap = 0;

	*out = NULL;
	if (st == ST_DONE)
		return SASL_BAD_PROTOCOL;
	sv->st = ST_DONE;                       /* unless a challenge moves it on */

	if (in != NULL && len == 1 && in[0] == '*')
		return SASL_CANCELLED;
	if (in == NULL && st != ST_START)
		return SASL_BAD_PROTOCOL;
	if (in != NULL) {
		if (len > SASL_MAX_B64)
			return SASL_BAD_PROTOCOL;
		if (st == ST_START && len == 1 && in[0] == '=')
			len = 0;                /* RFC 4954: empty initial response */
		cap = len / 4 * 3;
		msg = xmalloc(cap + 1);
		if (!sasl_b64_decode(in, len, msg, cap, &n)) {
			OPENSSL_cleanse(msg, cap + 1);
			free(msg);
			return SASL_BAD_PROTOCOL;
		}
		msg[n] = '\0';
	}

	switch (st) {
	case ST_START:
		switch (sv->mech) {
		case SASL_PLAIN:
			rs = msg ? sasl_plain(sv, db, msg, n) : sasl_challenge(sv, ST_PLAIN, "", 0, out);
			break;
		case SASL_LOGIN:
			rs = msg ? sasl_login_user(sv, msg, n, out) :
			    sasl_challenge(sv, ST_LOGIN_USER, "Username:", 9, out);
			break;
		case SASL_CRAM_MD5:
			/* the server speaks first: an initial response is a protocol error */
			rs = msg ? SASL_BAD_PROTOCOL : sasl_cram_start(sv, out);
			break;
		case SASL_SCRAM_SHA_256:
			rs = msg ? sasl_scram_first(sv, db, msg, n, out) :
			    sasl_challenge(sv, ST_SCRAM_FIRST, "", 0, out);
			break;
		}
		break;
	case ST_PLAIN:
		rs = sasl_plain(sv, db, msg, n);
		break;
	case ST_LOGIN_USER:
		rs = sasl_login_user(sv, msg, n, out);
		break;
	case ST_LOGIN_PASS:
		rs = sasl_login_pass(sv, db, msg, n);
		break;
	case ST_CRAM:
		rs = sasl_cram(sv, db, msg, n);
		break;
	case ST_SCRAM_FIRST:
		rs = sasl_scram_first(sv, db, msg, n, out);
		break;
	case ST_SCRAM_FINAL:
		rs = sasl_scram_final(sv, db, msg, n, out);
		break;
	case ST_SCRAM_ACK:
		if (n == 0 && sv->auth != NULL)
			rs = SASL_OK;   /* auth was set when the proof was verified */
		break;
	case ST_DONE:
		break;
	}
	if (msg) {
		OPENSSL_cleanse(msg, cap + 1);
		free(msg);
	}
	if (rs != SASL_CONTINUE) {
		sv->st = ST_DONE;
		if (rs != SASL_OK) {
			free(sv->auth);
			sv->auth = NULL;
		}
		free(*out);
		*out = NULL;
	}
	return rs;
}

/* ---- lib/users.c as the user store ---- */

static int
sasl_users_verify(void *arg, const char *user, const char *password)
{
	return users_verify(arg, user, password);
}

static int
sasl_users_secrets(void *arg, const char *user, struct user_secrets *out)
{
	return users_get_secrets(arg, user, out);
}

static bool
sasl_users_canon(void *arg, const char *user, char *out, size_t outsz)
{
	return users_canon(user, NULL, out, outsz);
}

enum sasl_status
sasl_server_step(struct sasl_server *sv, struct users *u, const char *in, size_t len,
    char **out)
{
	struct sasl_userdb db = {
		.verify = sasl_users_verify,
		.secrets = sasl_users_secrets,
		.canon = sasl_users_canon,
		.arg = u,
	};

	return sasl_server_step_db(sv, &db, in, len, out);
}
