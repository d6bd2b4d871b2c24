/*
 * users.h - the local users database (<state-dir>/moat.db, SQLite, WAL).
 * One row per mailbox address; the password is a crypt(3) hash (yescrypt
 * via libcrypt).  The same users log in to SMTP AUTH, POP3 and IMAP.
 * Each thread opens its own handle.  Lookups are indexed point queries.
 *
 * Challenge-mechanism secrets (columns cram_md5 and scram_sha256) are
 * derived from the password by users_add/users_passwd:
 *   cram_md5      64 hex digits: the HMAC-MD5 outer and inner MD5 states
 *                 (Dovecot's CRAM-MD5 scheme layout, sasl_crypto.h).  They
 *                 are password-equivalent for CRAM-MD5 and, being one
 *                 unsalted MD5 compression, cheap to brute-force: a stolen
 *                 moat.db exposes those passwords far more than the
 *                 yescrypt hash does.  That is the price of CRAM-MD5.
 *   scram_sha256  "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>"
 *                 (RFC 5802 section 3; the same text form as PostgreSQL).
 * Users created before these columns were filled have NULL secrets: they
 * can log in with PLAIN and LOGIN only (CRAM-MD5/SCRAM fail for them like
 * a wrong password) until their password is set again (moat user passwd).
 */
#ifndef MOAT_USERS_H
#define MOAT_USERS_H

#include <stdbool.h>
#include <stddef.h>

struct users;

/* path: the database file.  create: make it (and the schema) if missing. */
struct users *users_open(const char *path, bool create, char **err);
void users_close(struct users *);

/*
 * Canonical form of a mailbox address: domain lowercased, local part
 * lowercased, "+extension" removed when delim is a one-character string.
 * Returns false if addr is not local@domain or out is too small.
 */
bool users_canon(const char *addr, const char *delim, char *out, size_t outsz);

/* 1 exists, 0 no such user, -1 error (address is canonicalised first) */
int  users_exists(struct users *, const char *addr, const char *delim);
/* 1 password matches, 0 no (or no such user), -1 error */
int  users_verify(struct users *, const char *addr, const char *password);
/* 0 ok, -1 error with *err (exists already, bad address, db error) */
int  users_add(struct users *, const char *addr, const char *password, char **err);
int  users_del(struct users *, const char *addr, char **err);
int  users_passwd(struct users *, const char *addr, const char *password, char **err);
/* calls cb(address, created_unix_time, arg) in address order; count or -1 */
int  users_list(struct users *, void (*cb)(const char *, long long, void *), void *arg);

#define USERS_SCRAM_ITER        4096    /* RFC 7677 minimum and our default */
#define USERS_SCRAM_SALT_LEN    16      /* what users_add generates */
#define USERS_SCRAM_SALT_MAX    64      /* what users_get_secrets accepts */
#define USERS_KEY_LEN           32      /* SHA-256 */

struct user_secrets {
	bool            has_cram_md5;
	unsigned char   cram_md5[32];           /* outer state, inner state */
	bool            has_scram;
	unsigned        scram_iter;
	size_t          scram_saltlen;
	unsigned char   scram_salt[USERS_SCRAM_SALT_MAX];
	unsigned char   scram_stored_key[USERS_KEY_LEN];
	unsigned char   scram_server_key[USERS_KEY_LEN];
};

/*
 * The secrets of addr (canonicalised first, no delimiter).  1 found (each
 * has_* says whether that secret is present and well-formed), 0 no such
 * user, -1 database error.  *out is zeroed first; wipe it with
 * users_secrets_clear() after use.  Costs one indexed point query.
 */
int  users_get_secrets(struct users *, const char *addr, struct user_secrets *out);
void users_secrets_clear(struct user_secrets *);
/*
 * Derive both secrets from a password with the given SCRAM salt and
 * iteration count (what users_add does with a random salt and
 * USERS_SCRAM_ITER).  0 ok, -1 bad arguments or crypto failure.
 */
int  users_derive_secrets(const char *password, const void *salt, size_t saltlen,
         unsigned iter, struct user_secrets *out);

/*
 * One handle per thread on dbpath (opened without create), kept open for
 * the thread's next calls and closed when the thread exits; reopened when
 * dbpath changes.  NULL with *err (and errno, ENOENT if the database does
 * not exist) on failure.  After a database error call
 * users_thread_drop() so the next call opens a fresh handle.
 */
struct users *users_thread_handle(const char *dbpath, char **err);
void users_thread_drop(void);

#endif
