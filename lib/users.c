/*
 * users.c - the local users database: <state-dir>/moat.db, SQLite in WAL
 * mode, table `users`.  Passwords are crypt(3) hashes from libcrypt
 * (yescrypt, "$y$", default cost); verification compares in constant time
 * and an unknown user costs one hash computation too, so response timing
 * does not reveal which addresses exist.
 *
 * users_add/users_passwd also store the secrets the challenge mechanisms
 * need (CRAM-MD5 MD5 states, SCRAM-SHA-256 salt/iterations/StoredKey/
 * ServerKey, see users.h for the formats and their risk); users_get_secrets
 * reads them back for lib/sasl.c.
 *
 * Runs in: the moat CLI (add/del/passwd/list), the worker's event loop
 * (users_exists at RCPT time: one indexed point query on a statement kept
 * prepared in the handle) and pool threads (local delivery, AUTH).
 * A handle belongs to one thread (SQLITE_OPEN_NOMUTEX);
 * users_thread_handle() keeps one per thread, closed at thread exit.
 * Untrusted input: addresses from SMTP; users_canon() bounds and checks
 * them (<= 254 bytes, no control bytes, no '/', no leading '.') because the
 * canonical form also names the Maildir on disk.  All SQL is prepared with
 * bound parameters.
 */
#include "config.h"
#include "users.h"
#include "log.h"
#include "sasl_crypto.h"
#include "util.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <sqlite3.h>
#include <openssl/crypto.h>

#define USERS_ADDR_MAX     254          /* RFC 5321 path limit minus <> */

struct users {
	sqlite3        *db;
	sqlite3_stmt   *st_exists;
	sqlite3_stmt   *st_hash;
	sqlite3_stmt   *st_add;
	sqlite3_stmt   *st_del;
	sqlite3_stmt   *st_passwd;
	sqlite3_stmt   *st_list;
	sqlite3_stmt   *st_secrets;
	char           *dummy_setting;  /* crypt setting used for unknown users */
};

static const char users_schema[] =
	"CREATE TABLE IF NOT EXISTS users ("
	" address TEXT PRIMARY KEY NOT NULL,"
	" hash TEXT NOT NULL,"
	" created INTEGER NOT NULL,"
	" updated INTEGER NOT NULL,"
	" scram_sha256 TEXT,"           /* SCRAM-SHA-256 salt, i, StoredKey, ServerKey */
	" cram_md5 TEXT"                /* CRAM-MD5 HMAC-MD5 states (hex) */
	");";

static char *
users_errf(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return xstrdup(msg);
}

static void
users_seterr(char **err, char *msg)
{
	if (err)
		*err = msg;
	else
		free(msg);
}

bool
users_canon(const char *addr, const char *delim, char *out, size_t outsz)
{
	const char *at;
	size_t len, llen, dlen, i;
	char dc = '\0';

	if (addr == NULL || out == NULL || outsz == 0)
		return false;
	len = strnlen(addr, USERS_ADDR_MAX + 1);
	if (len == 0 || len > USERS_ADDR_MAX || len >= outsz)
		return false;
	for (i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)addr[i];
		if (ch < 0x20 || ch == 0x7f)    /* CR, LF, TAB, other controls */
			return false;
	}
	at = strchr(addr, '@');
	if (at == NULL || at != strrchr(addr, '@'))
		return false;
	llen = (size_t)(at - addr);
	dlen = len - llen - 1;
	if (llen == 0 || dlen == 0)
		return false;

	if (delim && delim[0] != '\0' && delim[1] == '\0')
		dc = delim[0];
	if (dc != '\0') {
		const char *p = memchr(addr, dc, llen);
		/* "+tag@x" has no user part: keep it whole, as Postfix does */
		if (p && p > addr)
			llen = (size_t)(p - addr);
	}

	/* the local part and the domain name directories on disk */
	if (addr[0] == '.' || at[1] == '.')
		return false;
	if (memchr(addr, '/', llen) || memchr(at + 1, '/', dlen))
		return false;
	if (at[dlen] == '.')                    /* "x@example.net." */
		return false;
	for (i = 0; i + 1 < dlen; i++)
		if (at[1 + i] == '.' && at[2 + i] == '.')
			return false;

	memcpy(out, addr, llen);
	out[llen] = '@';
	memcpy(out + llen + 1, at + 1, dlen);
	out[llen + 1 + dlen] = '\0';
	ascii_lower(out);
	return true;
}

/* constant-time comparison of two NUL-terminated strings */
static bool
users_ct_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), n = MAX(la, lb), i;
	volatile unsigned char d = (unsigned char)(la != lb);

	for (i = 0; i < n; i++) {
		unsigned char ca = i < la ? (unsigned char)a[i] : 0;
		unsigned char cb = i < lb ? (unsigned char)b[i] : 0;
		d |= ca ^ cb;
	}
	return d == 0;
}

/* hash password with setting into out (>= CRYPT_OUTPUT_SIZE); false on failure */
static bool
users_crypt(const char *password, const char *setting, char *out, size_t outsz)
{
	struct crypt_data *cd;
	const char *h;
	bool ok = false;

	cd = xcalloc(1, sizeof(*cd));
	h = crypt_rn(password, setting, cd, (int)sizeof(*cd));
	if (h && h[0] != '*' && moat_strlcpy(out, h, outsz) < outsz)
		ok = true;
	explicit_bzero(cd, sizeof(*cd));
	free(cd);
	return ok;
}

static char *
users_new_setting(void)
{
	char *s;

	errno = 0;
	s = crypt_gensalt_ra("$y$", 0, NULL, 0);
	return s;
}

static int
users_prepare(struct users *u, sqlite3_stmt **st, const char *sql, char **err)
{
	if (sqlite3_prepare_v3(u->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK) {
		users_seterr(err, users_errf("users: %s", sqlite3_errmsg(u->db)));
		return -1;
	}
	return 0;
}

struct users *
users_open(const char *path, bool create, char **err)
{
	struct users *u;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
	char *emsg = NULL;

	if (create) {
		/* create the file ourselves: the hashes are nobody else's business */
		int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
		if (fd < 0) {
			int e = errno;
			users_seterr(err, users_errf("%s: %s", path, strerror(e)));
			errno = e;
			return NULL;
		}
		close(fd);
	} else if (access(path, F_OK) < 0) {
		int e = errno;
		users_seterr(err, users_errf("%s: %s", path, strerror(e)));
		errno = e;
		return NULL;
	}

	u = xcalloc(1, sizeof(*u));
	if (sqlite3_open_v2(path, &u->db, flags, NULL) != SQLITE_OK) {
		users_seterr(err, users_errf("%s: %s", path,
		    u->db ? sqlite3_errmsg(u->db) : "out of memory"));
		goto fail;
	}
	sqlite3_busy_timeout(u->db, 5000);
	sqlite3_extended_result_codes(u->db, 1);
	if (sqlite3_exec(u->db, "PRAGMA journal_mode=WAL", NULL, NULL, &emsg) != SQLITE_OK ||
	    sqlite3_exec(u->db, "PRAGMA synchronous=FULL", NULL, NULL, &emsg) != SQLITE_OK) {
		users_seterr(err, users_errf("%s: %s", path, emsg ? emsg : "cannot set WAL mode"));
		sqlite3_free(emsg);
		goto fail;
	}
	/* idempotent; also covers a moat.db made by another module first */
	if (sqlite3_exec(u->db, users_schema, NULL, NULL, &emsg) != SQLITE_OK ||
	    (create && sqlite3_exec(u->db, "PRAGMA user_version=1", NULL, NULL, &emsg) != SQLITE_OK)) {
		users_seterr(err, users_errf("%s: %s", path, emsg ? emsg : "cannot create schema"));
		sqlite3_free(emsg);
		goto fail;
	}
	if (users_prepare(u, &u->st_exists,
	        "SELECT 1 FROM users WHERE address = ?1", err) < 0 ||
	    users_prepare(u, &u->st_hash,
	        "SELECT hash FROM users WHERE address = ?1", err) < 0 ||
	    users_prepare(u, &u->st_add,
	        "INSERT INTO users (address, hash, created, updated, cram_md5, scram_sha256)"
	        " VALUES (?1, ?2, ?3, ?3, ?4, ?5)", err) < 0 ||
	    users_prepare(u, &u->st_del,
	        "DELETE FROM users WHERE address = ?1", err) < 0 ||
	    users_prepare(u, &u->st_passwd,
	        "UPDATE users SET hash = ?2, updated = ?3, cram_md5 = ?4, scram_sha256 = ?5"
	        " WHERE address = ?1", err) < 0 ||
	    users_prepare(u, &u->st_list,
	        "SELECT address, created FROM users ORDER BY address", err) < 0 ||
	    users_prepare(u, &u->st_secrets,
	        "SELECT cram_md5, scram_sha256 FROM users WHERE address = ?1", err) < 0)
		goto fail;
	if ((u->dummy_setting = users_new_setting()) == NULL) {
		users_seterr(err, users_errf("crypt_gensalt: %s", strerror(errno ? errno : EINVAL)));
		goto fail;
	}
	return u;
fail:
	users_close(u);
	errno = EIO;
	return NULL;
}

void
users_close(struct users *u)
{
	if (u == NULL)
		return;
	sqlite3_finalize(u->st_exists);
	sqlite3_finalize(u->st_hash);
	sqlite3_finalize(u->st_add);
	sqlite3_finalize(u->st_del);
	sqlite3_finalize(u->st_passwd);
	sqlite3_finalize(u->st_list);
	sqlite3_finalize(u->st_secrets);
	sqlite3_close(u->db);
	free(u->dummy_setting);
	free(u);
}

int
users_exists(struct users *u, const char *addr, const char *delim)
{
	char canon[USERS_ADDR_MAX + 1];
	int rc, r;

	if (!users_canon(addr, delim, canon, sizeof(canon)))
		return 0;
	sqlite3_bind_text(u->st_exists, 1, canon, -1, SQLITE_STATIC);
	rc = sqlite3_step(u->st_exists);
	r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
	sqlite3_reset(u->st_exists);
	sqlite3_clear_bindings(u->st_exists);
	return r;
}

int
users_verify(struct users *u, const char *addr, const char *password)
{
	char canon[USERS_ADDR_MAX + 1];
	char stored[CRYPT_OUTPUT_SIZE];
	char computed[CRYPT_OUTPUT_SIZE];
	bool found = false;
	int rc, r;

	stored[0] = '\0';
	if (users_canon(addr, NULL, canon, sizeof(canon))) {
		sqlite3_bind_text(u->st_hash, 1, canon, -1, SQLITE_STATIC);
		rc = sqlite3_step(u->st_hash);
		if (rc == SQLITE_ROW) {
			const unsigned char *h = sqlite3_column_text(u->st_hash, 0);
			if (h && moat_strlcpy(stored, (const char *)h, sizeof(stored)) < sizeof(stored))
				found = true;
		}
		sqlite3_reset(u->st_hash);
		sqlite3_clear_bindings(u->st_hash);
		if (rc != SQLITE_ROW && rc != SQLITE_DONE)
			return -1;
	}
	/* always one hash computation, whether the user exists or not */
	if (!users_crypt(password ? password : "", found ? stored : u->dummy_setting,
	    computed, sizeof(computed)))
		r = found ? -1 : 0;
	else
		r = found && users_ct_equal(computed, stored) ? 1 : 0;
	explicit_bzero(computed, sizeof(computed));
	explicit_bzero(stored, sizeof(stored));
	return r;
}

static int
users_hash_new(const char *password, char *out, size_t outsz, char **err)
{
	char *setting;
	bool ok;

	if (password == NULL || password[0] == '\0') {
		users_seterr(err, users_errf("empty password"));
		return -1;
	}
	if ((setting = users_new_setting()) == NULL) {
		users_seterr(err, users_errf("crypt_gensalt: %s", strerror(errno ? errno : EINVAL)));
		return -1;
	}
	ok = users_crypt(password, setting, out, outsz);
	free(setting);
	if (!ok) {
		users_seterr(err, users_errf("crypt: cannot hash the password"));
		return -1;
	}
	return 0;
}

/* ---- challenge-mechanism secrets ---- */

#define USERS_CRAM_TEXT         (2 * SASL_CRAM_CTX_LEN + 1)
#define USERS_SCRAM_TEXT        256
static const char users_scram_prefix[] = "SCRAM-SHA-256$";

void
users_secrets_clear(struct user_secrets *s)
{
	OPENSSL_cleanse(s, sizeof(*s));
	memset(s, 0, sizeof(*s));
}

int
users_derive_secrets(const char *password, const void *salt, size_t saltlen, unsigned iter,
    struct user_secrets *out)
{
	size_t pwlen;

	memset(out, 0, sizeof(*out));
	if (password == NULL || salt == NULL || saltlen == 0 || saltlen > USERS_SCRAM_SALT_MAX ||
	    iter == 0)
		return -1;
	pwlen = strlen(password);
	sasl_cram_md5_ctx(password, pwlen, out->cram_md5);
	out->has_cram_md5 = true;
	if (!sasl_scram_keys(password, pwlen, salt, saltlen, iter, out->scram_stored_key,
	    out->scram_server_key)) {
		users_secrets_clear(out);
		return -1;
	}
	memcpy(out->scram_salt, salt, saltlen);
	out->scram_saltlen = saltlen;
	out->scram_iter = iter;
	out->has_scram = true;
	return 0;
}

/* the column texts of both secrets of a new password (fresh random salt) */
static int
users_secret_texts(const char *password, char cram[USERS_CRAM_TEXT], char scram[USERS_SCRAM_TEXT],
    char **err)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char salt[USERS_SCRAM_SALT_LEN];
	char b_salt[SASL_B64_ENCLEN(USERS_SCRAM_SALT_LEN)];
	char b_stored[SASL_B64_ENCLEN(USERS_KEY_LEN)], b_server[SASL_B64_ENCLEN(USERS_KEY_LEN)];
	struct user_secrets sec;
	size_t i;
	int n;

	random_bytes(salt, sizeof(salt));
	if (users_derive_secrets(password, salt, sizeof(salt), USERS_SCRAM_ITER, &sec) < 0) {
		users_seterr(err, users_errf("cannot derive the CRAM-MD5/SCRAM secrets"));
		return -1;
	}
	for (i = 0; i < SASL_CRAM_CTX_LEN; i++) {
		cram[2 * i] = hex[sec.cram_md5[i] >> 4];
		cram[2 * i + 1] = hex[sec.cram_md5[i] & 15];
	}
	cram[2 * SASL_CRAM_CTX_LEN] = '\0';
	(void)sasl_b64_encode(sec.scram_salt, sec.scram_saltlen, b_salt, sizeof(b_salt));
	(void)sasl_b64_encode(sec.scram_stored_key, USERS_KEY_LEN, b_stored, sizeof(b_stored));
	(void)sasl_b64_encode(sec.scram_server_key, USERS_KEY_LEN, b_server, sizeof(b_server));
	n = snprintf(scram, USERS_SCRAM_TEXT, "%s%u:%s$%s:%s", users_scram_prefix, sec.scram_iter,
	    b_salt, b_stored, b_server);
	users_secrets_clear(&sec);
	OPENSSL_cleanse(b_stored, sizeof(b_stored));
	OPENSSL_cleanse(b_server, sizeof(b_server));
	if (n < 0 || n >= USERS_SCRAM_TEXT) {
		users_seterr(err, users_errf("SCRAM secret too long"));
		return -1;
	}
	return 0;
}

static int
users_hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool
users_parse_cram(const char *t, unsigned char out[SASL_CRAM_CTX_LEN])
{
	size_t i;

	if (strlen(t) != 2 * SASL_CRAM_CTX_LEN)
		return false;
	for (i = 0; i < SASL_CRAM_CTX_LEN; i++) {
		int hi = users_hexval((unsigned char)t[2 * i]);
		int lo = users_hexval((unsigned char)t[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return true;
}

/* "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" */
static bool
users_parse_scram(const char *t, struct user_secrets *s)
{
	const char *p, *colon, *dollar, *colon2;
	unsigned long long iter = 0;
	size_t n;

	if (strncmp(t, users_scram_prefix, sizeof(users_scram_prefix) - 1) != 0)
		return false;
	p = t + sizeof(users_scram_prefix) - 1;
	if ((colon = strchr(p, ':')) == NULL || colon == p || colon - p > 8)
		return false;
	for (; p < colon; p++) {
		if (*p < '0' || *p > '9')
			return false;
		iter = iter * 10 + (unsigned)(*p - '0');
	}
	if (iter == 0 || iter > 10000000)
		return false;
	p = colon + 1;
	if ((dollar = strchr(p, '$')) == NULL || (colon2 = strchr(dollar, ':')) == NULL)
		return false;
	if (!sasl_b64_decode(p, (size_t)(dollar - p), s->scram_salt, sizeof(s->scram_salt), &n) ||
	    n == 0)
		return false;
	s->scram_saltlen = n;
	if (!sasl_b64_decode(dollar + 1, (size_t)(colon2 - dollar - 1), s->scram_stored_key,
	    sizeof(s->scram_stored_key), &n) || n != USERS_KEY_LEN)
		return false;
	if (!sasl_b64_decode(colon2 + 1, strlen(colon2 + 1), s->scram_server_key,
	    sizeof(s->scram_server_key), &n) || n != USERS_KEY_LEN)
		return false;
	s->scram_iter = (unsigned)iter;
	return true;
}

int
users_get_secrets(struct users *u, const char *addr, struct user_secrets *out)
{
	char canon[USERS_ADDR_MAX + 1];
	int rc, r;

	memset(out, 0, sizeof(*out));
	if (!users_canon(addr, NULL, canon, sizeof(canon)))
		return 0;
	sqlite3_bind_text(u->st_secrets, 1, canon, -1, SQLITE_STATIC);
	rc = sqlite3_step(u->st_secrets);
	r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
	if (rc == SQLITE_ROW) {
		const unsigned char *c = sqlite3_column_text(u->st_secrets, 0);
		const unsigned char *s = sqlite3_column_text(u->st_secrets, 1);
		if (c && users_parse_cram((const char *)c, out->cram_md5))
			out->has_cram_md5 = true;
		if (s && users_parse_scram((const char *)s, out))
			out->has_scram = true;
		if (!out->has_cram_md5)
			OPENSSL_cleanse(out->cram_md5, sizeof(out->cram_md5));
		if (!out->has_scram) {
			OPENSSL_cleanse(out->scram_stored_key, sizeof(out->scram_stored_key));
			OPENSSL_cleanse(out->scram_server_key, sizeof(out->scram_server_key));
			out->scram_saltlen = 0;
			out->scram_iter = 0;
		}
	}
	sqlite3_reset(u->st_secrets);       /* SQLite frees (not wipes) the row texts */
	sqlite3_clear_bindings(u->st_secrets);
	return r;
}

/* ---- per-thread handles ---- */

struct users_tls {
	struct users   *users;
	char            path[PATH_MAX];
};

static pthread_key_t users_key;
static pthread_once_t users_key_once = PTHREAD_ONCE_INIT;

static void
users_tls_free(void *p)
{
	struct users_tls *t = p;

	users_close(t->users);
	free(t);
}

static void
users_key_init(void)
{
	if (pthread_key_create(&users_key, users_tls_free) != 0)
		fatalx("users: pthread_key_create failed");
}

static struct users_tls *
users_tls(void)
{
	struct users_tls *t;

	pthread_once(&users_key_once, users_key_init);
	if ((t = pthread_getspecific(users_key)) == NULL) {
		t = xcalloc(1, sizeof(*t));
		if (pthread_setspecific(users_key, t) != 0)
			fatalx("users: pthread_setspecific failed");
	}
	return t;
}

struct users *
users_thread_handle(const char *dbpath, char **err)
{
	struct users_tls *t = users_tls();

	if (t->users && strcmp(dbpath, t->path) == 0)
		return t->users;
	users_close(t->users);
	t->users = NULL;
	t->path[0] = '\0';
	if (strlen(dbpath) >= sizeof(t->path)) {
		users_seterr(err, users_errf("%s: path too long", dbpath));
		errno = ENAMETOOLONG;
		return NULL;
	}
	if ((t->users = users_open(dbpath, false, err)) != NULL)
		moat_strlcpy(t->path, dbpath, sizeof(t->path));
	return t->users;
}

void
users_thread_drop(void)
{
	struct users_tls *t = users_tls();

	users_close(t->users);
	t->users = NULL;
	t->path[0] = '\0';
}

/* ---- add, del, passwd, list ---- */

int
users_add(struct users *u, const char *addr, const char *password, char **err)
{
	char canon[USERS_ADDR_MAX + 1];
	char hash[CRYPT_OUTPUT_SIZE];
	char cram[USERS_CRAM_TEXT], scram[USERS_SCRAM_TEXT];
	int rc;

	if (!users_canon(addr, NULL, canon, sizeof(canon))) {
		users_seterr(err, users_errf("invalid address \"%s\"", esc(addr)));
		return -1;
	}
	if (users_hash_new(password, hash, sizeof(hash), err) < 0)
		return -1;
	if (users_secret_texts(password, cram, scram, err) < 0) {
		explicit_bzero(hash, sizeof(hash));
		return -1;
	}
	sqlite3_bind_text(u->st_add, 1, canon, -1, SQLITE_STATIC);
	sqlite3_bind_text(u->st_add, 2, hash, -1, SQLITE_STATIC);
	sqlite3_bind_int64(u->st_add, 3, (sqlite3_int64)time(NULL));
	sqlite3_bind_text(u->st_add, 4, cram, -1, SQLITE_STATIC);
	sqlite3_bind_text(u->st_add, 5, scram, -1, SQLITE_STATIC);
	rc = sqlite3_step(u->st_add);
	if (rc != SQLITE_DONE) {
		if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE ||
		    (rc & 0xff) == SQLITE_CONSTRAINT)
			users_seterr(err, users_errf("user %s exists already", canon));
		else
			users_seterr(err, users_errf("users: %s", sqlite3_errmsg(u->db)));
	}
	sqlite3_reset(u->st_add);
	sqlite3_clear_bindings(u->st_add);
	explicit_bzero(hash, sizeof(hash));
	OPENSSL_cleanse(cram, sizeof(cram));
	OPENSSL_cleanse(scram, sizeof(scram));
	return rc == SQLITE_DONE ? 0 : -1;
}

int
users_del(struct users *u, const char *addr, char **err)
{
	char canon[USERS_ADDR_MAX + 1];
	int rc, n = 0;

	if (!users_canon(addr, NULL, canon, sizeof(canon))) {
		users_seterr(err, users_errf("invalid address \"%s\"", esc(addr)));
		return -1;
	}
	sqlite3_bind_text(u->st_del, 1, canon, -1, SQLITE_STATIC);
	rc = sqlite3_step(u->st_del);
	if (rc == SQLITE_DONE)
		n = sqlite3_changes(u->db);
	else
		users_seterr(err, users_errf("users: %s", sqlite3_errmsg(u->db)));
	sqlite3_reset(u->st_del);
	sqlite3_clear_bindings(u->st_del);
	if (rc != SQLITE_DONE)
		return -1;
	if (n == 0) {
		users_seterr(err, users_errf("no such user %s", canon));
		return -1;
	}
	return 0;
}

int
users_passwd(struct users *u, const char *addr, const char *password, char **err)
{
	char canon[USERS_ADDR_MAX + 1];
	char hash[CRYPT_OUTPUT_SIZE];
	char cram[USERS_CRAM_TEXT], scram[USERS_SCRAM_TEXT];
	int rc, n = 0;

	if (!users_canon(addr, NULL, canon, sizeof(canon))) {
		users_seterr(err, users_errf("invalid address \"%s\"", esc(addr)));
		return -1;
	}
	if (users_hash_new(password, hash, sizeof(hash), err) < 0)
		return -1;
	if (users_secret_texts(password, cram, scram, err) < 0) {
		explicit_bzero(hash, sizeof(hash));
		return -1;
	}
	sqlite3_bind_text(u->st_passwd, 1, canon, -1, SQLITE_STATIC);
	sqlite3_bind_text(u->st_passwd, 2, hash, -1, SQLITE_STATIC);
	sqlite3_bind_int64(u->st_passwd, 3, (sqlite3_int64)time(NULL));
	sqlite3_bind_text(u->st_passwd, 4, cram, -1, SQLITE_STATIC);
	sqlite3_bind_text(u->st_passwd, 5, scram, -1, SQLITE_STATIC);
	rc = sqlite3_step(u->st_passwd);
	if (rc == SQLITE_DONE)
		n = sqlite3_changes(u->db);
	else
		users_seterr(err, users_errf("users: %s", sqlite3_errmsg(u->db)));
	sqlite3_reset(u->st_passwd);
	sqlite3_clear_bindings(u->st_passwd);
	explicit_bzero(hash, sizeof(hash));
	OPENSSL_cleanse(cram, sizeof(cram));
	OPENSSL_cleanse(scram, sizeof(scram));
	if (rc != SQLITE_DONE)
		return -1;
	if (n == 0) {
		users_seterr(err, users_errf("no such user %s", canon));
		return -1;
	}
	return 0;
}

int
users_list(struct users *u, void (*cb)(const char *, long long, void *), void *arg)
{
	int rc, n = 0;

	while ((rc = sqlite3_step(u->st_list)) == SQLITE_ROW) {
		const unsigned char *a = sqlite3_column_text(u->st_list, 0);
		long long created = (long long)sqlite3_column_int64(u->st_list, 1);
		if (a == NULL)
			continue;
		if (cb)
			cb((const char *)a, created, arg);
		n++;
	}
	sqlite3_reset(u->st_list);
	return rc == SQLITE_DONE ? n : -1;
}
