/*
 * sasl_crypto.h - the primitives under lib/sasl.c and the secrets of
 * lib/users.c: strict base64, HMAC-MD5 from precomputed MD5 states
 * (CRAM-MD5, Dovecot's stored layout), HMAC-SHA-256, SHA-256 and the
 * SCRAM-SHA-256 key derivation (RFC 5802 section 3).
 * Pure functions, no I/O, thread-safe.  OpenSSL 3 EVP for SHA-256/HMAC/
 * PBKDF2; MD5 is computed here because EVP hides the intermediate state
 * that CRAM-MD5 secrets are made of.
 */
#ifndef MOAT_SASL_CRYPTO_H
#define MOAT_SASL_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>

#define SASL_SHA256_LEN         32
#define SASL_MD5_LEN            16
#define SASL_CRAM_CTX_LEN       32      /* outer MD5 state, inner MD5 state */

/* bytes needed to base64-encode n bytes, including the NUL */
#define SASL_B64_ENCLEN(n)      ((((n) + 2) / 3) * 4 + 1)

/*
 * Base64 (RFC 4648 section 4, with padding).  encode: writes the text and a
 * NUL into out; returns its length, or (size_t)-1 when outsz is too small.
 */
size_t sasl_b64_encode(const void *in, size_t len, char *out, size_t outsz);
/* same into a malloc'ed string (never NULL: xmalloc) */
char  *sasl_b64_encode_alloc(const void *in, size_t len);
/*
 * Strict decoder: length a multiple of 4, alphabet only (no blanks, no
 * line breaks), '=' only as the final padding, unused bits zero (so every
 * byte string has exactly one accepted encoding).  "" decodes to 0 bytes.
 * false on any violation or when the result does not fit outsz.
 */
bool   sasl_b64_decode(const char *in, size_t len, void *out, size_t outsz, size_t *outlen);

/*
 * CRAM-MD5 secret: the MD5 states after the HMAC key blocks K^opad and
 * K^ipad (RFC 2104 section 4), as Dovecot's CRAM-MD5 scheme stores them:
 * outer a,b,c,d then inner a,b,c,d, each 32-bit word little-endian.
 */
void   sasl_cram_md5_ctx(const void *key, size_t keylen, unsigned char ctx[SASL_CRAM_CTX_LEN]);
/* HMAC-MD5(key, msg) from that context */
void   sasl_cram_md5_hmac(const unsigned char ctx[SASL_CRAM_CTX_LEN], const void *msg, size_t len,
           unsigned char out[SASL_MD5_LEN]);

bool   sasl_sha256(const void *msg, size_t len, unsigned char out[SASL_SHA256_LEN]);
bool   sasl_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len,
           unsigned char out[SASL_SHA256_LEN]);
/*
 * SCRAM-SHA-256 keys: SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt,
 * iter); StoredKey = H(HMAC(SaltedPassword, "Client Key")); ServerKey =
 * HMAC(SaltedPassword, "Server Key").  The password is used as given (no
 * SASLprep, see sasl.h).  false on an OpenSSL failure.
 */
bool   sasl_scram_keys(const char *password, size_t pwlen, const void *salt, size_t saltlen,
           unsigned iter, unsigned char stored_key[SASL_SHA256_LEN],
           unsigned char server_key[SASL_SHA256_LEN]);

#endif
