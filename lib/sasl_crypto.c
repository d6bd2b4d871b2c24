/*
 * sasl_crypto.c - strict base64, HMAC-MD5 from stored MD5 states
 * (CRAM-MD5), SHA-256, HMAC-SHA-256 and the SCRAM-SHA-256 key derivation.
 *
 * Runs in: pool threads (SASL steps), the moat CLI (user add/passwd).
 * Untrusted input: sasl_b64_decode reads client text; it never reads past
 * len and never writes past outsz.  Secrets on the stack are wiped with
 * OPENSSL_cleanse.
 *
 * The MD5 block function is here (RFC 1321) because OpenSSL 3's EVP API has
 * no way to start a digest from a saved state, which is what CRAM-MD5
 * verification against a stored secret needs; the low-level MD5_* calls
 * are deprecated.  tests/unit/test_sasl.c checks it against EVP MD5 and
 * EVP_MAC HMAC-MD5.
 */
#include "config.h"
#include "sasl_crypto.h"
#include "util.h"

#include <stdint.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

/* ---- base64 ---- */

static const char b64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t
sasl_b64_encode(const void *in, size_t len, char *out, size_t outsz)
{
	const unsigned char *p = in;
	size_t i, o = 0;

	if (len > (SIZE_MAX - 4) / 4 * 3 || outsz < SASL_B64_ENCLEN(len))
		return (size_t)-1;
	for (i = 0; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
		out[o++] = b64_alphabet[v >> 18 & 63];
		out[o++] = b64_alphabet[v >> 12 & 63];
		out[o++] = b64_alphabet[v >> 6 & 63];
		out[o++] = b64_alphabet[v & 63];
	}
	if (i < len) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)p[i + 1] << 8;
		out[o++] = b64_alphabet[v >> 18 & 63];
		out[o++] = b64_alphabet[v >> 12 & 63];
		out[o++] = i + 1 < len ? b64_alphabet[v >> 6 & 63] : '=';
		out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

char *
sasl_b64_encode_alloc(const void *in, size_t len)
{
	size_t sz = SASL_B64_ENCLEN(len);
	char *s = xmalloc(sz);

	(void)sasl_b64_encode(in, len, s, sz);
	return s;
}

static int
b64_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

bool
sasl_b64_decode(const char *in, size_t len, void *outv, size_t outsz, size_t *outlen)
{
	unsigned char *out = outv;
	size_t i, o = 0;

	*outlen = 0;
	if (len % 4 != 0)
		return false;
	for (i = 0; i < len; i += 4) {
		int v[4], k, pad = 0;
		uint32_t w;
		bool last = i + 4 == len;

		for (k = 0; k < 4; k++) {
			unsigned char c = (unsigned char)in[i + k];
			if (c == '=' && last && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0)            /* "=" followed by data */
				return false;
			if ((v[k] = b64_val(c)) < 0)
				return false;
		}
		w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
		/* non-canonical: bits beyond the last decoded byte must be zero */
		if ((pad == 1 && (w & 0xff) != 0) || (pad == 2 && (w & 0xffff) != 0))
			return false;
		if (o + 3 - (size_t)pad > outsz)
			return false;
		out[o++] = (unsigned char)(w >> 16);
		if (pad < 2)
			out[o++] = (unsigned char)(w >> 8);
		if (pad < 1)
			out[o++] = (unsigned char)w;
	}
	*outlen = o;
	return true;
}

/* ---- MD5 (RFC 1321), only what HMAC from a saved state needs ---- */

static const uint32_t md5_k[64] = {
	0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee,
	0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
	0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be,
	0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
	0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa,
	0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
	0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
	0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
	0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c,
	0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
	0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05,
	0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
	0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039,
	0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
	0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1,
	0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

static const unsigned char md5_s[64] = {
	7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
	5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
	4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
	6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
};

static const uint32_t md5_init[4] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476 };

struct md5 {
	uint32_t        st[4];
	uint64_t        n;              /* bytes hashed so far */
	unsigned char   buf[64];
	size_t          used;
};

static uint32_t
le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
put_le32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static void
md5_block(uint32_t st[4], const unsigned char blk[64])
{
	uint32_t m[16], a = st[0], b = st[1], c = st[2], d = st[3], f, t;
	unsigned i, g;

	for (i = 0; i < 16; i++)
		m[i] = le32(blk + 4 * i);
	for (i = 0; i < 64; i++) {
		if (i < 16) {
			f = (b & c) | (~b & d);
			g = i;
		} else if (i < 32) {
			f = (d & b) | (~d & c);
			g = (5 * i + 1) % 16;
		} else if (i < 48) {
			f = b ^ c ^ d;
			g = (3 * i + 5) % 16;
		} else {
			f = c ^ (b | ~d);
			g = (7 * i) % 16;
		}
		t = f + a + md5_k[i] + m[g];
		a = d;
		d = c;
		c = b;
		b = b + (t << md5_s[i] | t >> (32 - md5_s[i]));
	}
	st[0] += a;
	st[1] += b;
	st[2] += c;
	st[3] += d;
	OPENSSL_cleanse(m, sizeof(m));
}

static void
md5_update(struct md5 *m, const void *data, size_t len)
{
	const unsigned char *p = data;

	m->n += len;
	while (len > 0) {
		size_t k = MIN(len, 64 - m->used);
		memcpy(m->buf + m->used, p, k);
		m->used += k;
		p += k;
		len -= k;
		if (m->used == 64) {
			md5_block(m->st, m->buf);
			m->used = 0;
		}
	}
}

static void
md5_final(struct md5 *m, unsigned char out[SASL_MD5_LEN])
{
	static const unsigned char zeros[64] = { 0x80 };
	unsigned char lenle[8];
	uint64_t bits = m->n * 8;
	size_t padlen = m->used < 56 ? 56 - m->used : 120 - m->used;
	int i;

	for (i = 0; i < 8; i++)
		lenle[i] = (unsigned char)(bits >> (8 * i));
	md5_update(m, zeros, padlen);
	md5_update(m, lenle, 8);
	for (i = 0; i < 4; i++)
		put_le32(out + 4 * i, m->st[i]);
	OPENSSL_cleanse(m, sizeof(*m));
}

void
sasl_cram_md5_ctx(const void *key, size_t keylen, unsigned char ctx[SASL_CRAM_CTX_LEN])
{
	unsigned char k[64], ipad[64], opad[64];
	uint32_t is[4], os[4];
	int i;

	memset(k, 0, sizeof(k));
	if (keylen > 64) {
		struct md5 m = { .st = { md5_init[0], md5_init[1], md5_init[2], md5_init[3] } };
		md5_update(&m, key, keylen);
		md5_final(&m, k);
	} else if (keylen > 0)
		memcpy(k, key, keylen);
	for (i = 0; i < 64; i++) {
		ipad[i] = k[i] ^ 0x36;
		opad[i] = k[i] ^ 0x5c;
	}
	memcpy(is, md5_init, sizeof(is));
	memcpy(os, md5_init, sizeof(os));
	md5_block(is, ipad);
	md5_block(os, opad);
	for (i = 0; i < 4; i++) {
		put_le32(ctx + 4 * i, os[i]);
		put_le32(ctx + 16 + 4 * i, is[i]);
	}
	OPENSSL_cleanse(k, sizeof(k));
	OPENSSL_cleanse(ipad, sizeof(ipad));
	OPENSSL_cleanse(opad, sizeof(opad));
	OPENSSL_cleanse(is, sizeof(is));
	OPENSSL_cleanse(os, sizeof(os));
}

void
sasl_cram_md5_hmac(const unsigned char ctx[SASL_CRAM_CTX_LEN], const void *msg, size_t len,
    unsigned char out[SASL_MD5_LEN])
{
	struct md5 m;
	unsigned char inner[SASL_MD5_LEN];
	int i;

	memset(&m, 0, sizeof(m));
	for (i = 0; i < 4; i++)
		m.st[i] = le32(ctx + 16 + 4 * i);
	m.n = 64;                       /* the K^ipad block is behind us */
	md5_update(&m, msg, len);
	md5_final(&m, inner);

	memset(&m, 0, sizeof(m));
	for (i = 0; i < 4; i++)
		m.st[i] = le32(ctx + 4 * i);
	m.n = 64;
	md5_update(&m, inner, sizeof(inner));
	md5_final(&m, out);
	OPENSSL_cleanse(inner, sizeof(inner));
}

/* ---- SHA-256, HMAC-SHA-256, SCRAM keys ---- */

bool
sasl_sha256(const void *msg, size_t len, unsigned char out[SASL_SHA256_LEN])
{
	unsigned int n = 0;

	return EVP_Digest(msg, len, out, &n, EVP_sha256(), NULL) == 1 && n == SASL_SHA256_LEN;
}

bool
sasl_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len,
    unsigned char out[SASL_SHA256_LEN])
{
	size_t n = 0;
	static const unsigned char nokey[1];

	/* EVP_Q_mac refuses a NULL key pointer even with length 0 */
	if (keylen == 0)
		key = nokey;
	return EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, keylen, msg, len,
	    out, SASL_SHA256_LEN, &n) != NULL && n == SASL_SHA256_LEN;
}

bool
sasl_scram_keys(const char *password, size_t pwlen, const void *salt, size_t saltlen,
    unsigned iter, unsigned char stored_key[SASL_SHA256_LEN],
    unsigned char server_key[SASL_SHA256_LEN])
{
	unsigned char salted[SASL_SHA256_LEN], client_key[SASL_SHA256_LEN];
	bool ok;

	if (iter == 0 || iter > 10000000 || pwlen > INT32_MAX || saltlen > INT32_MAX)
		return false;
	ok = PKCS5_PBKDF2_HMAC(password, (int)pwlen, salt, (int)saltlen, (int)iter, EVP_sha256(),
	        (int)sizeof(salted), salted) == 1 &&
	    sasl_hmac_sha256(salted, sizeof(salted), "Client Key", 10, client_key) &&
	    sasl_sha256(client_key, sizeof(client_key), stored_key) &&
	    sasl_hmac_sha256(salted, sizeof(salted), "Server Key", 10, server_key);
	OPENSSL_cleanse(salted, sizeof(salted));
	OPENSSL_cleanse(client_key, sizeof(client_key));
	return ok;
}
